/**
 * Server throughput: sealed commands per second published to mosquitto (QoS 1,
 * PUBACK awaited) for a fleet of registered devices, through the server's own
 * path (CommandSender: seq allocated in a registry transaction, sealed to the
 * device's key, recorded, published, marked sent), on one core (one Node.js
 * process; mosquitto runs in its own).
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KeyRing, generateEncryptionKey, generateSigningKey, newP256Jwk, sealCommand, toJwkSet, type PublicJwk } from '../../protocol/index.js';
import { CommandSender } from '../../server/core/command-sender.js';
import { connectBroker, publishQos1 } from '../../server/core/mqtt-connection.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { SealPool, type Seal } from '../../server/core/seal-pool.js';
import type { ServerKeys } from '../../server/keys/server-keys.js';
import { startMosquittoProcess } from '../helpers/mosquitto-process.js';

export interface ServerFigures {
  devices: number;
  commands: number;
  concurrency: number;
  commands_per_s: number;
  /** Seal floor of the protocol (node:crypto, same work) as a rate on one core. */
  seal_floor_per_s: number;
  ratio_to_seal_floor: number;
  /** The same with sealing in a pool of worker threads (`--seal-workers N`), per pool size. */
  seal_workers: { workers: number; commands_per_s: number; ratio_to_seal_floor: number }[];
  /** The same commands sealed with node-jose only (no registry, no broker): the protocol's own ceiling. */
  seal_only_per_s: number;
  /** Registry work per command alone, one command at a time (allocate seq, record, mark sent: 3 transactions, synchronous=FULL on this disk). */
  registry_only_per_s: number;
  /** The same, batched `concurrency` commands per transaction as the server's group commit does (3 transactions per batch). */
  registry_batched_per_s: number;
  register_fleet_s: number;
}

/** RFC 7638 thumbprint of a P-256 public key. */
function thumbprint(x: string, y: string): string {
  return createHash('sha256').update(`{"crv":"P-256","kty":"EC","x":"${x}","y":"${y}"}`).digest('base64url');
}

function fleetKey(): PublicJwk {
  const { x, y } = newP256Jwk();
  return { kty: 'EC', crv: 'P-256', x, y, kid: thumbprint(x, y), use: 'enc', alg: 'ECDH-ES+A256KW' };
}

export async function benchServer(options: {
  devices: number;
  commands: number;
  concurrency: number;
  sealFloorMs: number;
  sealWorkers: number[];
}): Promise<ServerFigures> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-server-'));
  const broker = await startMosquittoProcess({ persistence: false });
  try {
    const [signing, encryption] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
    const keys: ServerKeys = {
      dir,
      serverId: 'bench-server',
      signing,
      encryption,
      trust: toJwkSet([signing, encryption]),
      decryption: await KeyRing.create([encryption]),
    };
    const storage = openSqliteStorage(join(dir, 'registry.sqlite'), { create: true });
    const t0 = performance.now();
    const ids: string[] = [];
    // One registry transaction per device, as `device add` does (one big outer transaction turns
    // the per-device savepoints quadratic in better-sqlite3/SQLite: minutes for 10,000).
    for (let i = 0; i < options.devices; i++) {
      const id = `dev-${String(i).padStart(5, '0')}`;
      await storage.devices.add({ id, userId: 'bench', origin: 'jwks', encryption: fleetKey() });
      ids.push(id);
    }
    const registerS = (performance.now() - t0) / 1000;

    const client = await connectBroker({ url: broker.url }, { clientId: 'bench-server' });
    const params = { sensor: { sample_interval_s: 60 } };
    let offset = 0;
    /** Sealed+published commands/s through CommandSender, `concurrency` in flight, each to a device not sent to before. */
    const measure = async (seal: Seal | undefined): Promise<number> => {
      const sender = new CommandSender({
        storage,
        keys,
        topicPrefix: 'provision',
        publish: (topic, payload) => publishQos1(client, topic, payload),
        ...(seal ? { seal } : {}),
      });
      const device = (i: number): string => ids[(offset + i) % ids.length] as string;
      // Warm up (JIT, first statements prepared, worker threads loaded) on devices outside the measured set.
      await Promise.all(Array.from({ length: 50 }, (_, i) => sender.send({ deviceId: device(i), action: 'update', params })));
      offset += 50;
      let next = 0;
      const t1 = performance.now();
      await Promise.all(
        Array.from({ length: options.concurrency }, async () => {
          while (next < options.commands) {
            const i = next++;
            await sender.send({ deviceId: device(i), action: 'update', params });
          }
        }),
      );
      offset += options.commands;
      return options.commands / ((performance.now() - t1) / 1000);
    };
    const rate = await measure(undefined);
    const withWorkers: { workers: number; commands_per_s: number }[] = [];
    for (const n of options.sealWorkers) {
      const pool = SealPool.start(n);
      try {
        withWorkers.push({ workers: n, commands_per_s: await measure(pool.seal) });
      } finally {
        await pool.close();
      }
    }
    await client.endAsync();

    // The parts on their own, same process, same data.
    const sample = Math.min(options.commands, 500);
    const t2 = performance.now();
    for (let i = 0; i < sample; i++) {
      const d = await storage.devices.get(ids[i % ids.length] as string);
      await sealCommand(
        { serverId: 'bench-server', deviceId: d?.id ?? 'x', action: 'update', userId: 'bench', params, seq: 1 },
        { signer: signing, recipient: d?.encryption as PublicJwk },
      );
    }
    const sealOnly = sample / ((performance.now() - t2) / 1000);
    const t3 = performance.now();
    for (let i = 0; i < sample; i++) {
      const { seq } = await storage.seq.allocate(ids[i % ids.length] as string);
      const jti = crypto.randomUUID();
      await storage.commands.record({
        jti,
        deviceId: ids[i % ids.length] as string,
        action: 'update',
        userId: 'bench',
        paramsDigest: 'x',
        seq,
        encryptionKid: 'k',
        sealed: 'x',
        expiresAt: Date.now() + 300_000,
      });
      await storage.commands.markSent(jti);
    }
    const registryOnly = sample / ((performance.now() - t3) / 1000);
    // The same writes batched as CommandSender's group commit does with `concurrency` sends in flight.
    const t4 = performance.now();
    for (let i = 0; i < sample; i += options.concurrency) {
      const batch = ids.slice(i % ids.length, (i % ids.length) + Math.min(options.concurrency, sample - i));
      const seqs = await storage.seq.allocateMany(batch);
      const records = batch.map((deviceId, j) => {
        const a = seqs[j];
        if (a === undefined || a instanceof Error) throw a ?? new Error('no seq');
        return {
          jti: crypto.randomUUID(),
          deviceId,
          action: 'update',
          userId: 'bench',
          paramsDigest: 'x',
          seq: a.seq,
          encryptionKid: 'k',
          sealed: 'x',
          expiresAt: Date.now() + 300_000,
        };
      });
      await storage.commands.recordMany(records);
      await storage.commands.markSentMany(records.map((r) => r.jti));
    }
    const registryBatched = sample / ((performance.now() - t4) / 1000);
    await storage.close();

    const floor = 1000 / options.sealFloorMs;
    const r = (x: number, d = 1): number => Math.round(x * 10 ** d) / 10 ** d;
    return {
      devices: options.devices,
      commands: options.commands,
      concurrency: options.concurrency,
      commands_per_s: r(rate),
      seal_floor_per_s: r(floor),
      ratio_to_seal_floor: r(rate / floor, 3),
      seal_workers: withWorkers.map((w) => ({ workers: w.workers, commands_per_s: r(w.commands_per_s), ratio_to_seal_floor: r(w.commands_per_s / floor, 3) })),
      seal_only_per_s: r(sealOnly),
      registry_only_per_s: r(registryOnly),
      registry_batched_per_s: r(registryBatched),
      register_fleet_s: r(registerS, 2),
    };
  } finally {
    await broker.close();
    await rm(dir, { recursive: true, force: true });
  }
}
