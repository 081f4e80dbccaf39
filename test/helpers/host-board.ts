/**
 * A board on this machine, for the upgrade tests and the benchmark: a
 * directory laid out like a flashed board's root (`/opt/sensor-agent` a link
 * to `/opt/sensor-agent-releases/VERSION`, `/etc/sensor-agent`,
 * `/var/lib/sensor-agent`, `/usr/lib/sensor-agent/upgrade-guard`), the real
 * agent process and the real root installer (provisioning/upgrade-guard,
 * pointed at the directory by UPGRADE_GUARD_ROOT), and a small stand-in for
 * the three things systemd does for them on a board:
 * - sensor-agent.service: `upgrade-guard pre-start`, then the agent from
 *   whatever `/opt/sensor-agent` links to; restarted after a crash
 *   (RestartSec), never after exit 2 (failed) or 10;
 * - sensor-agent-upgrade.path: `upgrade-guard install` when the agent staged
 *   a release (`upgrade/staged.json`), and at boot when a trial is open;
 * - `systemctl restart` (the guard's UPGRADE_GUARD_RESTART) and
 *   `systemctl show` (UPGRADE_GUARD_AGENT_STATE) through two small scripts.
 * What the units themselves do on a board is proven by test/board.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, copyFile, cp, mkdir, readFile, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { REPO_ROOT } from '../deploy/repo-paths.js';
import { AGENT_NODE_ENV, AGENT_NODE_FLAGS } from './agent-process.js';

export const GUARD_SCRIPT = join(REPO_ROOT, 'provisioning/upgrade-guard');
const RESTART_SEC_MS = 500;
const POLL_MS = 100;

export interface HostBoardOptions {
  /** The board's root directory (created). */
  root: string;
  /** The agent tree flashed as the first release (e.g. build/host). */
  tree: string;
  /** Its version (the tree's .build-info.json agent_version). */
  version: string;
  /** Files for /etc/sensor-agent (a bundle's config.json, trust.jwks, release.jwks, token, certificates). */
  etc: Record<string, string>;
  /** Makes the config.json the agent runs with, given the board's paths. */
  config: (paths: BoardPaths) => Record<string, unknown>;
  /** Environment for the guard beyond the paths (e.g. UPGRADE_GUARD_CRASH_AT). */
  guardEnv?: Record<string, string>;
}

export interface BoardPaths {
  root: string;
  opt: string;
  releases: string;
  etc: string;
  state: string;
  upgrade: string;
  guard: string;
  run: string;
}

export function boardPaths(root: string): BoardPaths {
  return {
    root,
    opt: join(root, 'opt/sensor-agent'),
    releases: join(root, 'opt/sensor-agent-releases'),
    etc: join(root, 'etc/sensor-agent'),
    state: join(root, 'var/lib/sensor-agent'),
    upgrade: join(root, 'var/lib/sensor-agent/upgrade'),
    guard: join(root, 'usr/lib/sensor-agent/upgrade-guard'),
    run: join(root, 'run/host-board'),
  };
}

/** Copies an agent tree in as a release; a tree without its own Node gets node/bin/node linked to this Node, as flash does for `--node system`. */
export async function installRelease(paths: BoardPaths, tree: string, version: string): Promise<string> {
  const dir = join(paths.releases, version);
  await mkdir(paths.releases, { recursive: true });
  await cp(tree, dir, { recursive: true, verbatimSymlinks: true });
  if (!existsSync(join(dir, 'node/bin/node'))) {
    await mkdir(join(dir, 'node/bin'), { recursive: true });
    await symlink(process.execPath, join(dir, 'node/bin/node'));
  }
  return dir;
}

/** What `systemctl show -p ActiveState` would say of the agent's unit. */
export type UnitState = 'active' | 'activating' | 'failed' | 'inactive';

export class HostBoard {
  readonly paths: BoardPaths;
  #agent: ChildProcess | undefined;
  #install: ChildProcess | undefined;
  #log = '';
  #restarts = 0;
  #active: UnitState = 'inactive';
  #powered = false;
  #timer: NodeJS.Timeout | undefined;
  #busy = false;
  #starts = 0;
  readonly #guardEnv: Record<string, string>;

  private constructor(paths: BoardPaths, guardEnv: Record<string, string>) {
    this.paths = paths;
    this.#guardEnv = guardEnv;
  }

  /** Lays the board out (the flash step) and returns it powered off. */
  static async flash(o: HostBoardOptions): Promise<HostBoard> {
    const p = boardPaths(o.root);
    for (const d of [p.etc, p.state, p.run, dirname(p.guard), join(o.root, 'var/lib/sensor-agent-upgrade')]) await mkdir(d, { recursive: true, mode: 0o700 });
    await chmod(p.state, 0o700);
    await installRelease(p, o.tree, o.version);
    await symlink(`sensor-agent-releases/${o.version}`, p.opt);
    await copyFile(GUARD_SCRIPT, p.guard);
    await chmod(p.guard, 0o755);
    for (const [name, from] of Object.entries(o.etc)) await copyFile(from, join(p.etc, name));
    await writeFile(join(p.etc, 'config.json'), JSON.stringify(o.config(p), null, 2), { mode: 0o640 });
    await writeFile(join(p.run, 'restart.sh'), `#!/bin/sh\ntouch '${join(p.run, 'restart-request')}'\n`, { mode: 0o755 });
    await writeFile(join(p.run, 'state.sh'), `#!/bin/sh\ncat '${join(p.run, 'agent-state')}'\n`, { mode: 0o755 });
    return new HostBoard(p, o.guardEnv ?? {});
  }

  /** Everything the agent and the guard printed so far. */
  log(): string {
    return this.#log;
  }

  /** The release `/opt/sensor-agent` links to. */
  async current(): Promise<string> {
    return (await readlink(this.paths.opt)).replace(/^sensor-agent-releases\//, '');
  }

  get agentRunning(): boolean {
    return this.#agent !== undefined && this.#agent.exitCode === null && this.#agent.signalCode === null;
  }

  get unitState(): UnitState {
    return this.#active;
  }

  get starts(): number {
    return this.#starts;
  }

  /** Guard environment for the next runs (a test's crash knob). */
  setGuardEnv(env: Record<string, string>): void {
    for (const k of Object.keys(this.#guardEnv)) delete this.#guardEnv[k];
    Object.assign(this.#guardEnv, env);
  }

  guardEnv(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      UPGRADE_GUARD_ROOT: this.paths.root,
      UPGRADE_GUARD_RESTART: join(this.paths.run, 'restart.sh'),
      UPGRADE_GUARD_AGENT_STATE: join(this.paths.run, 'state.sh'),
      UPGRADE_GUARD_POLL_S: '0.2',
      // The agent runs as whoever runs the tests; the guard reads and writes its files as that user.
      UPGRADE_GUARD_AGENT_USER: userInfo().username,
      ...this.#guardEnv,
    };
  }

  /** Power on: the boot-time install/watch when a trial or a staged release is there, and the agent unit. */
  async boot(): Promise<void> {
    this.#powered = true;
    this.#restarts = 0;
    await this.#writeState('activating');
    await this.#startAgent();
    this.#timer = setInterval(() => void this.#tick(), POLL_MS);
    if (existsSync(join(this.paths.root, 'var/lib/sensor-agent-upgrade/trial.json')) || existsSync(join(this.paths.upgrade, 'staged.json')))
      this.#startInstall();
  }

  /** A power cut: SIGKILL of everything, nothing flushed that was not already. */
  async powerCut(): Promise<void> {
    this.#powered = false;
    if (this.#timer) clearInterval(this.#timer);
    const procs = [this.#agent, this.#install].filter((c): c is ChildProcess => c !== undefined && c.exitCode === null && c.signalCode === null);
    await Promise.all(procs.map((c) => new Promise<void>((r) => (c.once('exit', () => r()), c.kill('SIGKILL')))));
    this.#agent = undefined;
    this.#install = undefined;
  }

  /** A clean shutdown. */
  async stop(): Promise<void> {
    this.#powered = false;
    if (this.#timer) clearInterval(this.#timer);
    const procs = [this.#agent, this.#install].filter((c): c is ChildProcess => c !== undefined && c.exitCode === null && c.signalCode === null);
    await Promise.all(procs.map((c) => new Promise<void>((r) => (c.once('exit', () => r()), c.kill('SIGTERM')))));
  }

  /** Waits until the guard's install/watch run (if any) has ended. */
  async installDone(timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (this.#install && this.#install.exitCode === null && this.#install.signalCode === null) {
      if (Date.now() > until) throw new Error(`upgrade-guard install still running after ${timeoutMs} ms\n${this.#log.slice(-4000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async #tick(): Promise<void> {
    if (!this.#powered || this.#busy) return;
    this.#busy = true;
    try {
      const req = join(this.paths.run, 'restart-request');
      if (existsSync(req)) {
        await rm(req, { force: true });
        await this.#stopAgent();
        await this.#startAgent();
      }
      if (!this.#install && existsSync(join(this.paths.upgrade, 'staged.json'))) this.#startInstall();
    } finally {
      this.#busy = false;
    }
  }

  #startInstall(): void {
    const c = spawn(this.paths.guard, ['install'], { env: this.guardEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (b: Buffer): void => void (this.#log = (this.#log + `[guard] ${b.toString()}`).slice(-400_000));
    c.stdout?.on('data', keep);
    c.stderr?.on('data', keep);
    c.once('exit', (code, signal) => {
      keep(Buffer.from(`install exited ${code ?? signal}\n`));
      if (this.#install === c) this.#install = undefined;
    });
    this.#install = c;
  }

  async #runGuard(args: string[]): Promise<number> {
    const c = spawn(this.paths.guard, args, { env: this.guardEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (b: Buffer): void => void (this.#log = (this.#log + `[guard ${args[0]}] ${b.toString()}`).slice(-400_000));
    c.stdout?.on('data', keep);
    c.stderr?.on('data', keep);
    return new Promise((r) => c.once('exit', (code) => r(code ?? -1)));
  }

  async #startAgent(): Promise<void> {
    await this.#runGuard(['pre-start']);
    if (!this.#powered) return;
    const node = join(this.paths.opt, 'node/bin/node');
    const c = spawn(node, [...AGENT_NODE_FLAGS, join(this.paths.opt, 'sensor-agent.mjs'), 'run', '--config', join(this.paths.etc, 'config.json')], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...AGENT_NODE_ENV, NOTIFY_SOCKET: '' },
    });
    this.#starts++;
    const keep = (b: Buffer): void => void (this.#log = (this.#log + b.toString()).slice(-400_000));
    c.stdout?.on('data', keep);
    c.stderr?.on('data', keep);
    this.#agent = c;
    await this.#writeState('active');
    c.once('exit', (code) => {
      if (this.#agent !== c) return;
      this.#agent = undefined;
      keep(Buffer.from(`[host-board] agent exited ${code}\n`));
      if (!this.#powered || c.killed) return;
      if (code === 2) return void this.#writeState('failed');
      if (code === 10 || code === 0) return void this.#writeState('inactive');
      this.#restarts++;
      void this.#writeState('activating').then(() =>
        setTimeout(() => {
          if (this.#powered && !this.#agent) void this.#startAgent();
        }, RESTART_SEC_MS),
      );
    });
  }

  async #stopAgent(): Promise<void> {
    const c = this.#agent;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 10_000);
    await gone;
    clearTimeout(t);
  }

  async #writeState(state: UnitState): Promise<void> {
    this.#active = state;
    const f = join(this.paths.run, 'agent-state');
    await writeFile(`${f}.tmp`, `ActiveState=${state}\nNRestarts=${this.#restarts}\n`);
    await rename(`${f}.tmp`, f);
  }

  /** The agent's state.json as it is on disk now. */
  async agentState(stateDir: string): Promise<Record<string, unknown>> {
    return JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')) as Record<string, unknown>;
  }
}
