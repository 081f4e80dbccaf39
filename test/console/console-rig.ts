/**
 * A console under test: a data directory, mosquitto (or the embedded broker when mosquitto is missing), operators of
 * each role made through the registry (as `provision-server user add` does), N registered devices, and a real
 * `provision-server serve --http` child process. Optional simulated boards (test/server/sim-fleet.ts) that speak the
 * wire protocol on the broker and report in, so rollouts run for real.
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
  close(): Promise<void>;
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
    const port = await freePort();
    serve = await startServeProcess(['--data', dataDir, '--http', `127.0.0.1:${port}`, '--client-id', `console-${port}`], 30_000);
    if (boards.length) {
      fleet = await SimFleet.connect(broker.url, { trust: data.keys.trust, serverId: data.keys.serverId });
      for (const d of boards) {
        fleet.add(d);
        await fleet.connectDevice(d, { intervalSeconds: 600 });
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
      close: async () => {
        await f?.close().catch(() => undefined);
        await running.stop();
        await broker.close().catch(() => undefined);
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await fleet?.close().catch(() => undefined);
    await serve?.stop();
    await broker.close().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
