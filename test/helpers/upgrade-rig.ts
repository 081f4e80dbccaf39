/**
 * Everything an upgrade needs, on this machine, with the real programs:
 * mosquitto with TLS, client certificates and the production ACL files
 * (provisioning/mosquitto), a data dir made by `provision-server init` (with
 * its release key), `provision-server serve`, a bundle for one board, and that
 * board flashed into a directory (host-board.ts) with the host agent tree
 * (`npm run build`'s build/host) as release 0.1.0. Used by the upgrade tests
 * and by the benchmark's upgrade section.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from '../deploy/repo-paths.js';
import { runServerCli, type CliResult } from '../server/run-cli.js';
import { startServeProcess, type ServeProcess } from '../server/run-serve.js';
import { startTlsMosquitto, type TlsMosquitto } from '../server/mosquitto-tls.js';
import { HostBoard, type BoardPaths } from './host-board.js';

const run = promisify(execFile);
export const HOST_TREE = join(REPO_ROOT, 'build/host');
export const BUILD_AGENT = join(REPO_ROOT, 'provisioning/build-agent');
export const DEVICE = 'sensor-up1';

export interface UpgradeRig {
  dir: string;
  data: string;
  broker: TlsMosquitto;
  serve: ServeProcess;
  board: HostBoard;
  cli(args: string[], timeoutMs?: number): Promise<CliResult>;
  /** The device's registry record as `device show --json` prints it. */
  device(): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

async function productionAcl(): Promise<string> {
  const dir = join(REPO_ROOT, 'provisioning/mosquitto');
  const backend = await readFile(join(dir, 'sensor-backend.acl'), 'utf8');
  const devices = await readFile(join(dir, 'sensor-devices.acl'), 'utf8');
  return `${backend}\n${devices}\n`;
}

/** Starts broker, serve and the board, and waits until the board is enrolled and online. */
export async function startUpgradeRig(options: { guardEnv?: Record<string, string> } = {}): Promise<UpgradeRig> {
  const dir = await mkdtemp(join(tmpdir(), 'upgrade-rig-'));
  const data = join(dir, 'data');
  const broker = await startTlsMosquitto({ acl: await productionAcl() });
  let serve: ServeProcess | undefined;
  let board: HostBoard | undefined;
  const cli = (args: string[], timeoutMs = 60_000): Promise<CliResult> => runServerCli([...args, '--data', data], { timeoutMs });
  try {
    const srv = await broker.clientCert('provision-server');
    const init = await runServerCli(['init', '--data', data, '--broker', broker.url, '--ca', broker.ca, '--cert', srv.cert, '--key', srv.key]);
    if (init.code !== 0) throw new Error(`init: ${init.stderr}`);
    serve = await startServeProcess(['--data', data, '--client-id', 'serve-up']);
    const cert = await broker.clientCert(DEVICE);
    const bundle = join(dir, 'bundle');
    const b = await cli([
      'bundle',
      '--device',
      DEVICE,
      '--user',
      'ops',
      '--out',
      bundle,
      '--client-cert',
      cert.cert,
      '--client-key',
      cert.key,
      '--gpio',
      'fake',
    ]);
    if (b.code !== 0) throw new Error(`bundle: ${b.stderr}`);
    const bundleConfig = JSON.parse(await readFile(join(bundle, 'config.json'), 'utf8')) as Record<string, unknown>;
    const etc: Record<string, string> = {};
    for (const f of ['trust.jwks', 'release.jwks', 'enroll.token', 'ca.pem', 'client.crt', 'client.key']) etc[f] = join(bundle, f);
    board = await HostBoard.flash({
      root: join(dir, 'board'),
      tree: HOST_TREE,
      version: '0.1.0',
      etc,
      guardEnv: options.guardEnv,
      config: (p: BoardPaths) => boardConfig(bundleConfig, p),
    });
    await board.boot();
    const rig: UpgradeRig = {
      dir,
      data,
      broker,
      serve,
      board,
      cli,
      device: async () => {
        const r = await cli(['device', 'show', DEVICE]);
        if (r.code !== 0) throw new Error(`device show: ${r.stderr}`);
        return JSON.parse(r.stdout) as Record<string, unknown>;
      },
      stop: async () => {
        await board?.stop();
        await serve?.stop();
        await broker.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
    await until(
      async () => (await rig.device().catch(() => ({}) as Record<string, unknown>)).state === 'provisioned',
      30_000,
      () => `board enrolled\n${board?.log() ?? ''}`,
    );
    return rig;
  } catch (err) {
    await board?.stop();
    await serve?.stop();
    await broker.stop();
    throw err;
  }
}

/** The bundle's config, its keys and state moved to the board's /var/lib (its other files stay beside it, in /etc/sensor-agent). */
export function boardConfig(bundle: Record<string, unknown>, p: BoardPaths): Record<string, unknown> {
  return {
    ...bundle,
    keystore: join(p.state, 'keys'),
    state_dir: join(p.state, 'state'),
    release_keys: join(p.etc, 'release.jwks'),
    upgrade: { dir: p.upgrade, installer_path: p.guard, install_root: p.root },
  };
}

/** Builds an agent tree for this machine (agent only: this machine's Node runs it) with the given version. */
export async function buildHostTree(out: string, version: string): Promise<void> {
  await run(
    BUILD_AGENT,
    ['--arch', 'x64', '--node', 'system', '--system-node-version', process.versions.node, '--gpio', 'omit', '--agent-version', version, '--out', out],
    { timeout: 120_000 },
  );
}

/** A release of `version` whose agent file is `script` (a broken release for the rollback tests); the real agent stays beside it as sensor-agent-real.mjs. */
export async function brokenTree(out: string, version: string, script: string): Promise<void> {
  await buildHostTree(out, version);
  await rename(join(out, 'sensor-agent.mjs'), join(out, 'sensor-agent-real.mjs'));
  await writeFile(join(out, 'sensor-agent.mjs'), script);
}

/** An agent that exits at once: systemd restarts it until the guard gives up on it. */
export const EXITS_AT_START = "process.stderr.write('broken release: exiting\\n');\nprocess.exit(1);\n";

/**
 * The real agent of the release, with its broker connections sent to an address that never answers
 * (TEST-NET-1): it starts, is ready, writes its progress, and never reaches the broker, as a release
 * with a TLS or DNS bug would.
 */
export const NEVER_CONNECTS = [
  "import tls from 'node:tls';",
  'const connect = tls.connect;',
  "tls.connect = (options, ...rest) => connect.call(tls, { ...options, host: '192.0.2.1', servername: 'unreachable.invalid' }, ...rest);",
  "await import('./sensor-agent-real.mjs');",
  '',
].join('\n');

export async function until<T>(probe: () => Promise<T | false | undefined> | T | false | undefined, timeoutMs: number, what: () => string): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== false && v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
