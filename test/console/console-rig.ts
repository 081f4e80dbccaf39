/**
 * A console under test: a data directory, mosquitto (or the embedded broker when mosquitto is missing), operators of
 * each role made through the registry (as `provision-server user add` does), N registered devices, and a real
 * `provision-server serve --http` child process. Optional simulated boards (test/server/sim-fleet.ts) that speak the
 * wire protocol on the broker and report in, so rollouts run for real; or optional real agents: the bundled
 * `sensor-agent run` (build/host/sensor-agent.mjs, as on a board), each provisioned as an operator does it
 * (`provision-server bundle` for its config, trust anchors and a one-time token), which enroll with serve over the
 * broker on first start, are tagged `boards` once enrolled, and are stopped with SIGTERM by close().
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateEncryptionKey, generateSigningKey, toPublicJwk, type PublicJwk } from '../../protocol/index.js';
import { initDataDir, openDataDir } from '../../server/data-dir.js';
import { hashPassword } from '../../server/operators/password.js';
import type { OperatorRole } from '../../server/storage/operator-records.js';
import type { Storage } from '../../server/storage/types.js';
import { freePort, mosquittoAvailable, startMosquittoProcess, type MosquittoProcess } from '../helpers/mosquitto-process.js';
import { readState } from '../../agent/store/state.js';
import { spawnAgent, type AgentProcess } from '../helpers/agent-process.js';
import { runServerCli } from '../server/run-cli.js';
import { startServeProcess, type ServeProcess } from '../server/run-serve.js';
import { SimFleet, makeSimDevice, startEmbeddedBroker, type EmbeddedBroker, type SimDevice } from '../server/sim-fleet.js';

export const PASSWORD = 'console-test-password-1';
export const USERS: Record<OperatorRole, string> = { admin: 'ada', operator: 'otto', viewer: 'vera' };

export interface RigOptions {
  /** Registered devices (no board behind them): `dev-00000`, ... */
  devices?: number;
  /** Simulated boards that report in and answer commands: `board-00`, ... */
  boards?: number;
  /** Extra setup with the registry open, before serve starts (hostile ids, tags). */
  seed?: (storage: Storage, keys: { signing: PublicJwk; encryption: PublicJwk }) => Promise<void>;
  /**
   * Real agent processes, bundled and enrolled as on boards: `board-00`, ... (tagged `boards`, like the simulated
   * ones; the two options do not mix).
   */
  agents?: number;
  /** Require mosquitto (the rollout test); else the embedded broker stands in when it is missing. */
  mosquitto?: boolean;
}

export interface ConsoleRig {
  /** http://127.0.0.1:PORT */
  base: string;
  dataDir: string;
  serve: ServeProcess;
  fleet: SimFleet | undefined;
  boards: SimDevice[];
  agents: RigAgent[];
  /** SIGTERM to every agent, awaited (close() does it too): their exit codes. */
  stopAgents(): Promise<(number | string)[]>;
  close(): Promise<void>;
}

export interface RigAgent {
  id: string;
  /** The bundle `provision-server bundle --out` wrote: config.json, trust.jwks, enroll.token; keys/ and state/ once it ran. */
  dir: string;
  configPath: string;
  process: AgentProcess;
}

export const boardId = (i: number): string => `board-${String(i).padStart(2, '0')}`;

/** SIGTERM, awaited (SIGKILL after 10 s): the exit code or signal name. */
async function stopAgent(a: RigAgent): Promise<number | string> {
  if (a.process.running()) a.process.child.kill('SIGTERM');
  const timer = setTimeout(() => a.process.child.kill('SIGKILL'), 10_000);
  try {
    return await a.process.exited;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * `provision-server bundle` for each board (the token is issued in the registry; serve is not needed), then each
 * agent started from its bundle once serve runs: it makes its keys, enrolls over the broker and is confirmed.
 */
async function bundleAgents(dataDir: string, root: string, count: number): Promise<{ id: string; dir: string; configPath: string }[]> {
  const out: { id: string; dir: string; configPath: string }[] = [];
  for (let i = 0; i < count; i++) {
    const id = boardId(i);
    const dir = join(root, id);
    const r = await runServerCli(['bundle', '--data', dataDir, '--device', id, '--user', 'fleet', '--out', dir, '--gpio', 'fake']);
    if (r.code !== 0) throw new Error(`bundle ${id} exited ${r.code}: ${r.stderr}`);
    out.push({ id, dir, configPath: join(dir, 'config.json') });
  }
  return out;
}

async function waitEnrolled(agents: RigAgent[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const states = await Promise.all(agents.map((a) => readState(join(a.dir, 'state')).catch(() => undefined)));
    if (states.every((s) => s?.provisioned === true)) return;
    const dead = agents.find((a) => !a.process.running());
    if (dead) throw new Error(`agent ${dead.id} exited before it enrolled: ${dead.process.output()}`);
    if (Date.now() > deadline) {
      const late = agents.filter((_, i) => states[i]?.provisioned !== true);
      throw new Error(`not enrolled within ${timeoutMs} ms: ${late.map((a) => `${a.id}\n${a.process.output()}`).join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

export const deviceId = (i: number): string => `dev-${String(i).padStart(5, '0')}`;

/** The tags and users of the plain devices: deterministic, so tests can count them. */
export function plainDevice(i: number): { userId: string; tags: string[] } {
  return { userId: `user-${i % 40}`, tags: [i % 2 === 0 ? 'site-a' : 'site-b', ...(i % 10 === 0 ? ['canary'] : [])] };
}

export async function startConsoleRig(options: RigOptions = {}): Promise<ConsoleRig> {
  const dir = await mkdtemp(join(tmpdir(), 'console-rig-'));
  const dataDir = join(dir, 'data');
  let broker: MosquittoProcess | EmbeddedBroker;
  if (mosquittoAvailable()) broker = await startMosquittoProcess({ persistence: false });
  else if (options.mosquitto) throw new Error('mosquitto is not installed');
  else broker = await startEmbeddedBroker();
  let serve: ServeProcess | undefined;
  let fleet: SimFleet | undefined;
  const agents: RigAgent[] = [];
  try {
    await initDataDir(dataDir, { broker: { url: broker.url } });
    const data = await openDataDir(dataDir);
    const boards: SimDevice[] = [];
    try {
      const storage = data.storage;
      for (const [role, name] of Object.entries(USERS) as [OperatorRole, string][]) {
        await storage.operators.add({ name, role, passwordHash: await hashPassword(PASSWORD) }, 'test:console-rig');
      }
      // Registered devices share one key pair: the console shows them, nothing is sent to them.
      const keys = { signing: toPublicJwk(await generateSigningKey()), encryption: toPublicJwk(await generateEncryptionKey()) };
      for (let i = 0; i < (options.devices ?? 0); i++) {
        const p = plainDevice(i);
        await storage.devices.add({ id: deviceId(i), userId: p.userId, origin: 'jwks', ...keys, state: 'provisioned' });
        await storage.devices.addTags(deviceId(i), p.tags);
      }
      for (let i = 0; i < (options.boards ?? 0); i++) {
        const d = await makeSimDevice(`board-${String(i).padStart(2, '0')}`);
        boards.push(d);
        await storage.devices.add({
          id: d.id,
          userId: 'fleet',
          origin: 'jwks',
          signing: toPublicJwk(d.signing),
          encryption: toPublicJwk(d.encryption),
          state: 'provisioned',
        });
        await storage.devices.addTags(d.id, ['boards']);
      }
      await options.seed?.(storage, keys);
    } finally {
      await data.storage.close();
    }
    const bundles = await bundleAgents(dataDir, join(dir, 'agents'), options.agents ?? 0);
    const port = await freePort();
    serve = await startServeProcess(['--data', dataDir, '--http', `127.0.0.1:${port}`, '--client-id', `console-${port}`], 30_000);
    if (boards.length) {
      fleet = await SimFleet.connect(broker.url, { trust: data.keys.trust, serverId: data.keys.serverId });
      for (const d of boards) {
        fleet.add(d);
        await fleet.connectDevice(d, { intervalSeconds: 600 });
      }
    }
    for (const b of bundles) agents.push({ ...b, process: spawnAgent(b.configPath) });
    if (agents.length) {
      await waitEnrolled(agents, 60_000);
      // Enrolled boards are in the registry: tag them as an operator would (`device tag add`; serve keeps running).
      for (const a of agents) {
        const r = await runServerCli(['device', 'tag', 'add', a.id, 'boards', '--data', dataDir]);
        if (r.code !== 0) throw new Error(`device tag add ${a.id} exited ${r.code}: ${r.stderr}`);
      }
    }
    const running = serve;
    const f = fleet;
    return {
      base: `http://127.0.0.1:${port}`,
      dataDir,
      serve: running,
      fleet: f,
      boards,
      agents,
      stopAgents: () => Promise.all(agents.map(stopAgent)),
      close: async () => {
        await Promise.all(agents.map(stopAgent));
        await f?.close().catch(() => undefined);
        await running.stop();
        await broker.close().catch(() => undefined);
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await Promise.all(agents.map(stopAgent));
    await fleet?.close().catch(() => undefined);
    await serve?.stop();
    await broker.close().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
