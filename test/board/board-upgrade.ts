/**
 * Agent upgrades on the emulated board (issue 22), registered by
 * emulated-board.board.ts after the board is enrolled and commanded, before
 * its delete: releases built by provisioning/build-agent for the board's CPU,
 * added with `provision-server release add`, sent with `send DEVICE upgrade
 * --release VERSION` through the production broker, downloaded by the agent
 * in chunks, installed and judged by the root installer
 * (/usr/lib/sensor-agent/upgrade-guard) through the units as flashed.
 *
 * BOARD_UPGRADE selects what runs (default per CPU, DEFAULT_UPGRADE_SET):
 *   basic  v1 -> v2 (applied, reported, link switched, v1 kept); v3 exits at
 *          start (rolled_back E_UPGRADE_CRASH_LOOP); v3b starts, tells systemd
 *          READY and pings the watchdog but never connects (rolled_back
 *          E_UPGRADE_NO_CONNECT)
 *   full   basic, plus: a release for another CPU (rejected E_UPGRADE_ARCH)
 *          and a tampered chunk (failed E_UPGRADE_CHUNK), nothing changed on
 *          the board; and a power cut (SIGKILL of the whole container) at each
 *          step of an upgrade: during the download, after staging, during
 *          unpack, right after the switch, during the first start, during the
 *          commit
 *   none   no upgrade steps
 *
 * The guard's steps are hit with its test knob UPGRADE_GUARD_CRASH_AT through
 * a test-only drop-in for sensor-agent-upgrade.service written into the
 * booted image (never into systemd/), which also holds the stopped unit in
 * ExecStopPost until the test cuts the power, so nothing runs between the
 * guard's stop and the cut. The download is cut while chunks arrive, with
 * serve paused (SIGSTOP) so that the cut lands mid-transfer.
 */
import { expect } from 'chai';
import { execFile, type ChildProcess } from 'node:child_process';
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PROVISIONING_DIR } from '../deploy/repo-paths.js';
import { toolEnv } from '../deploy/tools.js';
import { BoardSetupError, type BoardArch } from './host-tools.js';
import type { NspawnBoard, Ran } from './nspawn-board.js';

const execFileP = promisify(execFile);

export const UPGRADE_SETS = ['none', 'basic', 'full'] as const;
export type UpgradeSet = (typeof UPGRADE_SETS)[number];
/**
 * What BOARD_UPGRADE defaults to: x64 boots natively, the units as shipped,
 * and a boot takes a second, so everything; arm64 (qemu-user) the upgrade and
 * the two rollbacks; armv7 none (its `--node system` tree is upgraded the
 * same way, agent-only: BOARD_UPGRADE=basic runs it).
 */
export const DEFAULT_UPGRADE_SET: Readonly<Record<BoardArch, UpgradeSet>> = { x64: 'full', arm64: 'basic', armv7: 'none' };

export function upgradeSetFor(arch: BoardArch, env: string | undefined): UpgradeSet {
  if (env === undefined || env === '') return DEFAULT_UPGRADE_SET[arch];
  if (!(UPGRADE_SETS as readonly string[]).includes(env))
    throw new BoardSetupError('E_BOARD_ROOT', `BOARD_UPGRADE must be one of ${UPGRADE_SETS.join(', ')}, not '${env}'`);
  return env as UpgradeSet;
}

/** What the board test hands the upgrade steps (getters: the board and its mount change across boots). */
export interface UpgradeContext {
  arch: BoardArch;
  device: string;
  /** provisioning/build-agent's arguments for the flashed v1 tree (same CPU and Node options). */
  buildArgs: readonly string[];
  work(): string;
  data(): string;
  board(): NspawnBoard;
  /** The booted image's root as the host sees it (loop-mounted). */
  root(): string;
  serve(): ChildProcess | undefined;
  server(args: string[], timeoutMs?: number): Promise<Ran>;
  waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T>;
  journal(units?: string[]): Promise<string>;
  log(s: string): void;
  figures: UpgradeFigures;
}

export interface UpgradeFigures {
  set: UpgradeSet;
  /** build-agent wall time per release version (s). */
  build_s: Record<string, number>;
  /** `release add` wall time per release (s) and artifact size (bytes). */
  release_add_s: Record<string, number>;
  artifact_bytes: Record<string, number>;
  /** From the command's sent_at to its verified ack (server clock), per upgrade. */
  send_to_ack_s: Record<string, number>;
  /** Power cuts: the step, what the command ended as, from the cut to the ack (s). */
  power_cuts: Array<{ step: string; version: string; status: string; code: string | null; cut_to_ack_s: number; boot_s: number }>;
  /** Wall time of the upgrade steps (s). */
  total_s: number;
}

interface SentView {
  status: string;
  code: string | null;
  detail?: string | null;
  jti?: string;
  sent_at?: string;
  acked_at?: string;
  result?: { version?: string; previous?: string } | null;
}

interface BoardSnap {
  link: string;
  releases: string[];
  upgradeDir: string[];
  guardDir: string[];
  state: Record<string, unknown>;
}

/** v3: an agent that exits at once; systemd restarts it until the guard gives up on it. */
const EXITS_AT_START = "// test/board release: exits at start\nprocess.stderr.write('broken release: exiting at start\\n');\nprocess.exit(1);\n";

/**
 * v3b: the release's real agent (agent.mjs, beside this file) with every TCP
 * connection it opens sent to a closed port. It starts, tells systemd READY,
 * pings the watchdog, runs on trial (writes its progress) and never reaches
 * the broker: a release that cannot connect.
 */
const NEVER_CONNECTS = `// test/board release: the real agent, its TCP connections sent to a closed port
import net from 'node:net';
import tls from 'node:tls';
import { syncBuiltinESMExports } from 'node:module';
const redirect = (original) =>
  function (...args) {
    const o = args[0];
    if (o !== null && typeof o === 'object' && o.path === undefined) args[0] = { ...o, host: '127.0.0.1', port: 1 };
    else if (typeof o === 'number' || (typeof o === 'string' && /^\\d+$/.test(o))) args[0] = 1;
    return original.apply(this, args);
  };
tls.connect = redirect(tls.connect);
net.connect = redirect(net.connect);
net.createConnection = redirect(net.createConnection);
syncBuiltinESMExports();
process.stderr.write('broken release: every connection goes to 127.0.0.1:1\\n');
await import('./agent.mjs');
`;

/** The guard's steps cut by the power-cut matrix, and what each stands for. */
const GUARD_CUTS: ReadonlyArray<{ step: string; what: string }> = [
  { step: 'copied', what: 'after staging (the guard copied the staged release)' },
  { step: 'unpacked', what: 'during unpack (the tree unpacked, not yet renamed)' },
  { step: 'switched', what: 'right after the switch' },
  { step: 'restarted', what: 'during the first start of the new release' },
  { step: 'committing', what: 'during the commit' },
];

const CRASH_DROPIN = 'etc/systemd/system/sensor-agent-upgrade.service.d/zz-test-crash-at.conf';

export function describeBoardUpgrades(ctx: UpgradeContext, set: UpgradeSet): void {
  const basic = set === 'basic' || set === 'full' ? it : it.skip;
  const full = set === 'full' ? it : it.skip;
  const t0 = { at: Number.NaN };
  const tick = (): void => {
    if (Number.isNaN(t0.at)) t0.at = performance.now();
    ctx.figures.total_s = Math.round((performance.now() - t0.at) / 1000);
  };
  const dev = ctx.device;
  const waitS = ctx.arch === 'x64' ? 300 : 900;
  let v1 = '';
  let nodeVersion = '';

  // --- releases -----------------------------------------------------------
  // build-agent runs one at a time, in the background: the next releases build while the board upgrades.
  let buildQueue: Promise<unknown> = Promise.resolve();
  const builds = new Map<string, Promise<string>>();
  const treeOf = (version: string): string => join(ctx.work(), `tree-${version}`);

  function build(version: string, args: readonly string[]): Promise<string> {
    const had = builds.get(version);
    if (had) return had;
    const out = treeOf(version);
    const p = buildQueue.then(async () => {
      const t = performance.now();
      await execFileP(join(PROVISIONING_DIR, 'build-agent'), [...args, '--agent-version', version, '--out', out], {
        env: toolEnv(),
        maxBuffer: 64 * 1024 * 1024,
        timeout: 15 * 60_000,
      }).catch((e: { code?: number; stdout?: string; stderr?: string }) => {
        throw new Error(`build-agent ${version} exited ${String(e.code)}:\n${e.stdout ?? ''}${e.stderr ?? ''}`);
      });
      ctx.figures.build_s[version] = Math.round((performance.now() - t) / 1000);
      ctx.log(`build-agent ${version}: ${ctx.figures.build_s[version]} s`);
      return out;
    });
    // Awaited later; marked handled so a failed build in the background is reported by the step that needs it.
    p.catch(() => undefined);
    buildQueue = p.catch(() => undefined);
    builds.set(version, p);
    return p;
  }
  const buildSame = (version: string): Promise<string> => build(version, ctx.buildArgs);

  async function releaseAdd(tree: string, label: string, agentOnly = true): Promise<void> {
    const t = performance.now();
    const r = await ctx.server(['release', 'add', tree, ...(agentOnly ? ['--agent-only'] : []), '--json'], 10 * 60_000);
    expect(r.code, `release add ${tree}: ${r.stdout}${r.stderr}`).to.equal(0);
    ctx.figures.release_add_s[label] = Math.round((performance.now() - t) / 100) / 10;
    const view = JSON.parse(r.stdout) as Record<string, unknown>;
    const bytes = findNumber(view, 'bytes');
    if (bytes !== undefined) ctx.figures.artifact_bytes[label] = bytes;
    ctx.log(`release add ${label}${agentOnly ? ' --agent-only' : ''}: ${bytes ?? '?'} bytes in ${ctx.figures.release_add_s[label]} s`);
  }

  /** A copy of `from` stamped `version` (.build-info.json), its agent replaced by `script` (unless null), without a startup snapshot. */
  async function derivedTree(from: string, version: string, script: string | null, keepAgentAs?: string): Promise<string> {
    const out = join(ctx.work(), `derived-${version}`);
    await rm(out, { recursive: true, force: true });
    await cp(from, out, { recursive: true, verbatimSymlinks: true });
    if (keepAgentAs !== undefined) await cp(join(out, 'sensor-agent.mjs'), join(out, keepAgentAs));
    if (script !== null) await writeFile(join(out, 'sensor-agent.mjs'), script, { mode: 0o644 });
    const infoPath = join(out, '.build-info.json');
    const info = JSON.parse(await readFile(infoPath, 'utf8')) as Record<string, unknown>;
    const { snapshot: _dropped, ...rest } = info;
    await writeFile(infoPath, `${JSON.stringify({ ...rest, agent_version: version }, null, 2)}\n`);
    await rm(join(out, 'sensor-agent.blob'), { force: true });
    await rm(join(out, 'snapshot.env'), { force: true });
    return out;
  }

  // --- sending ------------------------------------------------------------
  function sendUpgrade(label: string, version: string, extra: string[] = []): Promise<SentView> {
    return sendRaw(label, ['--release', version, '--arch', ctx.arch, ...extra]);
  }

  async function sendRaw(label: string, args: string[]): Promise<SentView> {
    const r = await ctx.server(['send', dev, 'upgrade', ...args, '--wait', '--timeout', `${waitS}s`], (waitS + 120) * 1000);
    let view: SentView;
    try {
      view = JSON.parse(r.stdout) as SentView;
    } catch {
      throw new Error(`send ${dev} upgrade ${args.join(' ')} (${label}) exited ${r.code} without an ack:\n${r.stdout}\n${r.stderr}`);
    }
    if (typeof view.status !== 'string' || !['applied', 'rejected', 'failed', 'rolled_back'].includes(view.status)) {
      throw new Error(
        `send ${dev} upgrade (${label}) exited ${r.code}: ${r.stdout}\n${r.stderr}\n${await ctx.journal(['sensor-agent', 'sensor-agent-upgrade'])}`,
      );
    }
    if (view.sent_at !== undefined && view.acked_at !== undefined)
      ctx.figures.send_to_ack_s[label] = Math.round((Date.parse(view.acked_at) - Date.parse(view.sent_at)) / 100) / 10;
    ctx.log(
      `upgrade ${label}: ${view.status}${view.code ? ` ${view.code}` : ''}${view.detail ? ` (${view.detail})` : ''} in ${ctx.figures.send_to_ack_s[label] ?? '?'} s`,
    );
    return view;
  }

  async function selftestApplied(): Promise<void> {
    const r = await ctx.server(['send', dev, 'selftest', '--wait', '--timeout', `${waitS}s`], (waitS + 60) * 1000);
    expect(r.code, `selftest after the upgrade: ${r.stdout}${r.stderr}\n${await ctx.journal(['sensor-agent'])}`).to.equal(0);
    expect((JSON.parse(r.stdout) as SentView).status).to.equal('applied');
  }

  // --- the board ----------------------------------------------------------
  const sh = (script: string): Promise<string> => ctx.board().sh(script);

  async function snap(): Promise<BoardSnap> {
    const out = await sh(
      'readlink /opt/sensor-agent; echo @@; ls -A /opt/sensor-agent-releases; echo @@; ls -A /var/lib/sensor-agent/upgrade 2>/dev/null || :; echo @@; ls -A /var/lib/sensor-agent-upgrade 2>/dev/null || :; echo @@; cat /var/lib/sensor-agent/state/state.json',
    );
    const [link = '', rels = '', up = '', guard = '', state = '{}'] = out.split('@@\n');
    const lines = (s: string): string[] =>
      s
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l !== '')
        .sort();
    return { link: link.trim(), releases: lines(rels), upgradeDir: lines(up), guardDir: lines(guard), state: JSON.parse(state) as Record<string, unknown> };
  }

  /** The running release: the link's version, a complete tree behind it, the agent unit active on it. */
  async function expectRunning(version: string, why: string): Promise<void> {
    const s = await snap();
    expect(s.link, `${why}: /opt/sensor-agent`).to.equal(`sensor-agent-releases/${version}`);
    expect(
      s.releases.filter((r) => r.startsWith('.')),
      `${why}: no partial tree left`,
    ).to.deep.equal([]);
    const info = JSON.parse(await sh('cat /opt/sensor-agent/.build-info.json')) as { agent_version?: string };
    expect(info.agent_version, `${why}: the linked tree's .build-info.json`).to.equal(version);
    await sh('test -f /opt/sensor-agent/sensor-agent.mjs && test -x /opt/sensor-agent/node/bin/node');
    expect((await sh('sensor-agent --version')).trim(), `${why}: sensor-agent --version`).to.include(version);
    const unit = await ctx.waitFor(`${why}: sensor-agent.service active`, 5 * 60_000, async () => {
      const p = (await sh('systemctl show sensor-agent -p ActiveState --value')).trim();
      return p === 'active' ? p : undefined;
    });
    expect(unit).to.equal('active');
  }

  /** The server saw the board's report of `version` (device show: version, and the reported agent_version). */
  async function expectReported(version: string): Promise<void> {
    await ctx.waitFor(`a report with agent_version ${version}`, 5 * 60_000, async () => {
      const r = await ctx.server(['device', 'show', dev]);
      if (r.code !== 0) return undefined;
      const d = JSON.parse(r.stdout) as { version?: unknown; reported?: { agent_version?: unknown } | null };
      return d.version === version && d.reported?.agent_version === version ? true : undefined;
    });
  }

  /** After an upgrade ended: nothing of it is left pending (no staged files, no trial, no result waiting for its ack). */
  async function expectSettled(why: string): Promise<void> {
    await ctx.waitFor(`${why}: the upgrade's files gone (result acked)`, 2 * 60_000, async () => {
      const s = await snap();
      const left = s.upgradeDir.filter((f) => f !== 'tmp');
      return left.length === 0 && !s.guardDir.includes('trial') && !s.guardDir.includes('decision') ? true : undefined;
    });
    const s = await snap();
    expect(s.state.pending_upgrade ?? null, `${why}: state.json pending_upgrade`).to.equal(null);
  }

  async function commandStatus(jti: string): Promise<string[]> {
    const r = await ctx.server(['device', 'show', dev]);
    const d = JSON.parse(r.stdout) as Record<string, unknown>;
    const cmds = (d.commands ?? d.recent_commands ?? []) as Array<Record<string, unknown>>;
    return cmds.filter((c) => c.jti === jti).map((c) => String(c.status));
  }

  // --- power cuts ---------------------------------------------------------
  async function armCrashAt(step: string): Promise<void> {
    const p = join(ctx.root(), CRASH_DROPIN);
    await mkdir(join(p, '..'), { recursive: true });
    await writeFile(
      p,
      [
        `# test/board only: the guard stops at "${step}" as a power cut would stop it (exit 137), and the`,
        '# stopped unit is held in ExecStopPost until the test cuts the power, so nothing runs in between.',
        '[Service]',
        `Environment=UPGRADE_GUARD_CRASH_AT=${step}`,
        `ExecStopPost=/bin/sh -c 'if [ "$$EXIT_STATUS" = 137 ]; then exec sleep 900; fi'`,
        'TimeoutStopSec=1200',
        '',
      ].join('\n'),
      { mode: 0o644 },
    );
    await sh('systemctl daemon-reload');
  }

  async function disarm(): Promise<void> {
    await rm(join(ctx.root(), CRASH_DROPIN), { force: true });
  }

  async function cutAndBoot(): Promise<number> {
    await ctx.board().powerCut();
    await disarm();
    const t = performance.now();
    await ctx.board().boot();
    await ctx.board().waitBooted(ctx.board().bootCount, 12 * 60_000);
    return Math.round((performance.now() - t) / 100) / 10;
  }

  /** After a cut and a boot: one final ack, the board on the old or the new release (complete), enrolled, answering. */
  async function afterCut(step: string, sent: Promise<SentView>, from: string, to: string, cutAt: number, bootS: number): Promise<void> {
    const view = await sent;
    const cutToAck = Math.round((performance.now() - cutAt) / 100) / 10;
    expect(['applied', 'rolled_back', 'failed'], `cut ${step}: ${JSON.stringify(view)}`).to.include(view.status);
    const now = view.status === 'applied' ? to : from;
    if (view.status === 'applied') expect(view.result?.version, JSON.stringify(view)).to.equal(to);
    ctx.figures.power_cuts.push({ step, version: to, status: view.status, code: view.code, cut_to_ack_s: cutToAck, boot_s: bootS });
    ctx.log(
      `cut ${step}: the board booted in ${bootS} s; the upgrade to ${to} ended ${view.status}${view.code && view.code !== 'OK' ? ` ${view.code}` : ''}, ${cutToAck} s after the cut`,
    );
    await expectRunning(now, `after the cut at ${step}`);
    await selftestApplied();
    await expectReported(now);
    await expectSettled(`after the cut at ${step}`);
    // No second apply: the link stays, and the command has one final status.
    expect((await snap()).link).to.equal(`sensor-agent-releases/${now}`);
    if (view.jti !== undefined) expect(await commandStatus(view.jti)).to.deep.equal([view.status]);
    const unit = (await sh('systemctl show sensor-agent-upgrade.service -p ActiveState --value')).trim();
    expect(['inactive', 'active'], 'the installer is idle or finishing its watch').to.include(unit);
  }

  // ------------------------------------------------------------------------
  const section = `upgrades (BOARD_UPGRADE=${set})`;

  basic(
    `${section}: v1 -> v2 through the broker: applied, the board reports 0.2.0, /opt/sensor-agent -> sensor-agent-releases/0.2.0, v1 kept`,
    async function () {
      this.timeout(40 * 60_000);
      tick();
      const s0 = await snap();
      expect(s0.link, 'flash laid out /opt/sensor-agent as a link').to.match(/^sensor-agent-releases\/\d+\.\d+\.\d+/);
      v1 = s0.link.replace('sensor-agent-releases/', '');
      expect(s0.releases).to.deep.equal([v1]);
      const info = JSON.parse(await sh('cat /opt/sensor-agent/.build-info.json')) as { node: { version: string } };
      nodeVersion = info.node.version.replace(/^v/, '');
      // v2 first, then (in the background) every release the later steps need.
      const v2Tree = buildSame('0.2.0');
      void buildSame('0.3.1');
      if (set === 'full') {
        void buildSame('0.5.0');
        for (let i = 0; i < GUARD_CUTS.length; i++) void buildSame(`0.5.${i + 1}`);
      }
      await releaseAdd(await v2Tree, '0.2.0 agent-only');
      const sent = await sendUpgrade('0.2.0', '0.2.0');
      expect(sent, JSON.stringify(sent)).to.include({ status: 'applied' });
      expect(sent.result?.version).to.equal('0.2.0');
      await expectRunning('0.2.0', 'after v2');
      expect((await snap()).releases, "v1's tree kept beside v2").to.deep.equal([v1, '0.2.0'].sort());
      await expectReported('0.2.0');
      await expectSettled('after v2');
      tick();
    },
  );

  basic(`${section}: v3 exits at start: rolled_back E_UPGRADE_CRASH_LOOP, the board back on 0.2.0 and answering`, async function () {
    this.timeout(30 * 60_000);
    const v3 = await derivedTree(await buildSame('0.2.0'), '0.3.0', EXITS_AT_START);
    await releaseAdd(v3, '0.3.0 exits at start');
    const sent = await sendUpgrade('0.3.0 exits at start', '0.3.0');
    expect(sent, JSON.stringify(sent)).to.include({ status: 'rolled_back', code: 'E_UPGRADE_CRASH_LOOP' });
    await expectRunning('0.2.0', 'after v3');
    expect((await snap()).releases, "v3's tree removed, v1 and v2 kept").to.deep.equal([v1, '0.2.0'].sort());
    await selftestApplied();
    await expectSettled('after v3');
    tick();
  });

  basic(`${section}: v3b starts, is READY and pings the watchdog but never connects: rolled_back E_UPGRADE_NO_CONNECT at its deadline`, async function () {
    this.timeout(30 * 60_000);
    const v3b = await derivedTree(await buildSame('0.3.1'), '0.3.1', NEVER_CONNECTS, 'agent.mjs');
    await releaseAdd(v3b, '0.3.1 never connects');
    // The shortest deadline the command takes where the agent starts in a second (x64); under qemu-user a minute.
    const sent = await sendUpgrade('0.3.1 never connects', '0.3.1', ['--deadline', ctx.arch === 'x64' ? '30s' : '60s']);
    expect(sent, JSON.stringify(sent)).to.include({ status: 'rolled_back', code: 'E_UPGRADE_NO_CONNECT' });
    await expectRunning('0.2.0', 'after v3b');
    expect((await snap()).releases).to.deep.equal([v1, '0.2.0'].sort());
    await selftestApplied();
    await expectSettled('after v3b');
    tick();
  });

  full(
    `${section}: a release for another CPU is rejected (E_UPGRADE_ARCH) and a tampered chunk fails (E_UPGRADE_CHUNK): nothing on the board changes`,
    async function () {
      this.timeout(30 * 60_000);
      const other: BoardArch = ctx.arch === 'x64' ? 'arm64' : 'x64';
      const before = await snap();
      // Another CPU's release (an agent-only tree for the board's Node version, so the CPU is the only difference).
      const wrong = await build('0.9.0', ['--arch', other, '--node', 'system', '--system-node-version', nodeVersion, '--gpio', 'omit']);
      await releaseAdd(wrong, `0.9.0 ${other}`);
      const manifest = (await readFile(join(ctx.data(), 'releases', `0.9.0-${other}`, 'manifest.jws'), 'utf8')).trim();
      // The server sends each board its own CPU's build: the signed manifest of the other one goes as it is.
      const arch = await sendRaw(`0.9.0 ${other}`, ['--params', JSON.stringify({ manifest })]);
      expect(arch, JSON.stringify(arch)).to.include({ status: 'rejected', code: 'E_UPGRADE_ARCH' });
      await expectUnchanged(before, 'after the other CPU release');
      // A tampered chunk: the stored artifact changed after `release add`, so chunk 1 no longer matches the signed index.
      const tampered = await derivedTree(await buildSame('0.2.0'), '0.4.0', null);
      await releaseAdd(tampered, '0.4.0 tampered');
      const artifact = join(ctx.data(), 'releases', `0.4.0-${ctx.arch}`, 'artifact.tar.gz');
      const bytes = await readFile(artifact);
      expect(bytes.length, 'the artifact has a second chunk').to.be.greaterThan(61_440 + 1000);
      bytes[61_440 + 1000] = (bytes[61_440 + 1000] ?? 0) ^ 0xff;
      await writeFile(artifact, bytes);
      const chunk = await sendUpgrade('0.4.0 tampered', '0.4.0');
      expect(chunk, JSON.stringify(chunk)).to.include({ status: 'failed', code: 'E_UPGRADE_CHUNK' });
      await expectSettled('after the tampered chunk');
      await expectUnchanged(before, 'after the tampered chunk');
      await selftestApplied();
      tick();
    },
  );

  /** Link, releases, the upgrade dirs and state.json (its seq floor, recent-command window and write time aside) as before. */
  async function expectUnchanged(before: BoardSnap, why: string): Promise<void> {
    const after = await snap();
    expect(after.link, why).to.equal(before.link);
    expect(after.releases, why).to.deep.equal(before.releases);
    expect(
      after.upgradeDir.filter((f) => f !== 'tmp'),
      why,
    ).to.deep.equal(before.upgradeDir.filter((f) => f !== 'tmp'));
    expect(after.guardDir, why).to.deep.equal(before.guardDir);
    expect(stateAside(after.state), `${why}: state.json`).to.deep.equal(stateAside(before.state));
  }

  full(`${section}: a power cut during the download: the board boots, resumes the transfer and ends the upgrade with one ack`, async function () {
    this.timeout(40 * 60_000);
    const from = (await snap()).link.replace('sensor-agent-releases/', '');
    // A release with its own Node: tens of MB, so the transfer is long enough to cut.
    await releaseAdd(await buildSame('0.5.0'), '0.5.0 with Node', false);
    const sent = sendUpgrade('0.5.0 with Node (cut during the download)', '0.5.0');
    sent.catch(() => undefined);
    const part = await ctx.waitFor('a partial download on the board', 10 * 60_000, async () => {
      const out = await sh('cd /var/lib/sensor-agent/upgrade 2>/dev/null && for f in *.part; do [ -f "$f" ] && stat -c "%n %s" "$f"; done; ls -A');
      const m = /^(\S+\.part) (\d+)$/m.exec(out);
      return m && Number(m[2]) > 0 ? { name: m[1], bytes: Number(m[2]), ls: out } : undefined;
    });
    const serve = ctx.serve();
    serve?.kill('SIGSTOP');
    let cutAt: number;
    try {
      const ls = await sh('ls -A /var/lib/sensor-agent/upgrade');
      expect(ls, 'cut before the download completed').not.to.match(/staged\.json/);
      ctx.log(`cut during the download: ${part.name} at ${part.bytes} bytes`);
      cutAt = performance.now();
      await ctx.board().powerCut();
    } finally {
      serve?.kill('SIGCONT');
    }
    const t = performance.now();
    await ctx.board().boot();
    await ctx.board().waitBooted(ctx.board().bootCount, 12 * 60_000);
    const bootS = Math.round((performance.now() - t) / 100) / 10;
    await afterCut('download', sent, from, '0.5.0', cutAt, bootS);
    tick();
  });

  GUARD_CUTS.forEach(({ step, what }, i) => {
    full(`${section}: a power cut ${what} (UPGRADE_GUARD_CRASH_AT=${step}): a working, enrolled board, one final ack`, async function () {
      this.timeout(40 * 60_000);
      const from = (await snap()).link.replace('sensor-agent-releases/', '');
      const to = `0.5.${i + 1}`;
      await releaseAdd(await buildSame(to), `${to} agent-only`);
      await armCrashAt(step);
      const sent = sendUpgrade(`${to} (cut at ${step})`, to);
      sent.catch(() => undefined);
      await ctx.waitFor(`the guard to stop at ${step}`, 10 * 60_000, async () => {
        const p = await sh('systemctl show sensor-agent-upgrade.service -p SubState,ExecMainStatus');
        if (!/ExecMainStatus=137/.test(p)) return undefined;
        if (/SubState=stop-post/.test(p)) return true;
        throw new Error(`the guard stopped at ${step} but its unit was not held in ExecStopPost: ${p}\n${await ctx.journal(['sensor-agent-upgrade'])}`);
      });
      const cutAt = performance.now();
      const bootS = await cutAndBoot();
      await afterCut(step, sent, from, to, cutAt, bootS);
      tick();
    });
  });
}

/** state.json without what every command moves (the seq floor, the recent-command window and the last command, the time of the last write). */
function stateAside(state: Record<string, unknown>): Record<string, unknown> {
  const { last_seq: _seq, recent: _recent, last_command: _last, updated_at: _at, ...rest } = state;
  return rest;
}

function findNumber(v: unknown, key: string): number | undefined {
  if (Array.isArray(v)) {
    for (const x of v) {
      const n = findNumber(x, key);
      if (n !== undefined) return n;
    }
  } else if (v !== null && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) {
      if (k === key && typeof x === 'number') return x;
      const n = findNumber(x, key);
      if (n !== undefined) return n;
    }
  }
  return undefined;
}
