/**
 * Child process of the `servers` bench (servers.ts, child_process.fork): one
 * server's send path, as `send` and the HTTP API use it (CommandSender over
 * the storage interface, sealing in this thread, publishing to mosquitto at
 * QoS 1), on the registry it is given. Several of these run at once on one
 * PostgreSQL registry, each to its own devices.
 *
 * IPC (process.send / 'message'):
 *   parent -> {op: 'init', ...SenderInit}   child -> {op: 'ready'} (opened, connected, warmed up)
 *   parent -> {op: 'go'}                    child -> {op: 'done', start, end} (epoch ms, fractional)
 *   parent -> {op: 'parts', sample}         child -> {op: 'parts', seal_only_per_s, registry_batched_per_s}
 *   parent -> {op: 'exit'}                  (closes and exits 0)
 * Any failure: {op: 'error', message}, exit 1.
 */
import { randomUUID } from 'node:crypto';
import { sealCommand, type PublicJwk } from '../../protocol/index.js';
import { CommandSender } from '../../server/core/command-sender.js';
import { connectBroker, publishQos1 } from '../../server/core/mqtt-connection.js';
import { loadServerKeys } from '../../server/keys/server-keys.js';
import { openStorage, parseRegistryLocation } from '../../server/storage/open.js';
import type { Storage } from '../../server/storage/types.js';

export interface SenderInit {
  location: string;
  keysDir: string;
  brokerUrl: string;
  clientId: string;
  /** The devices measured, one command each. */
  ids: string[];
  /** Devices for the warm-up (JIT, statements, connections), outside `ids`. */
  warmupIds: string[];
  concurrency: number;
}

export type SenderRequest = ({ op: 'init' } & SenderInit) | { op: 'go' } | { op: 'parts'; sample: number } | { op: 'exit' };
export type SenderReply =
  | { op: 'ready' }
  | { op: 'done'; start: number; end: number }
  | { op: 'parts'; seal_only_per_s: number; registry_batched_per_s: number }
  | { op: 'error'; message: string };

const PARAMS = { sensor: { sample_interval_s: 60 } };
const now = (): number => performance.timeOrigin + performance.now();
const reply = (r: SenderReply): void => {
  process.send?.(r);
};

let storage: Storage | undefined;
let sender: CommandSender | undefined;
let init: SenderInit | undefined;
let close: (() => Promise<void>) | undefined;

async function sendAll(s: CommandSender, ids: string[], concurrency: number): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < ids.length) {
        const id = ids[next++] as string;
        await s.send({ deviceId: id, action: 'update', params: PARAMS });
      }
    }),
  );
}

async function handle(req: SenderRequest): Promise<void> {
  if (req.op === 'init') {
    init = req;
    const st = await openStorage(parseRegistryLocation(req.location));
    storage = st;
    const keys = await loadServerKeys(req.keysDir);
    const client = await connectBroker({ url: req.brokerUrl }, { clientId: req.clientId });
    close = async () => {
      await client.endAsync();
      await st.close();
    };
    sender = new CommandSender({ storage: st, keys, topicPrefix: 'provision', publish: (topic, payload) => publishQos1(client, topic, payload) });
    await sendAll(sender, req.warmupIds, req.concurrency);
    reply({ op: 'ready' });
    return;
  }
  if (req.op === 'go') {
    if (!sender || !init) throw new Error('init first');
    const start = now();
    await sendAll(sender, init.ids, init.concurrency);
    reply({ op: 'done', start, end: now() });
    return;
  }
  if (req.op === 'parts') {
    if (!storage || !init) throw new Error('init first');
    const st = storage;
    const ids = init.ids;
    const keys = await loadServerKeys(init.keysDir);
    const sample = Math.min(req.sample, ids.length);
    // Sealing alone (node-jose, as CommandSender does in this thread), to the registered keys.
    const t0 = performance.now();
    for (let i = 0; i < sample; i++) {
      const d = await st.devices.get(ids[i] as string);
      await sealCommand(
        { serverId: keys.serverId, deviceId: d?.id ?? 'x', action: 'update', userId: 'bench', params: PARAMS, seq: 1 },
        { signer: keys.signing, recipient: d?.encryption as PublicJwk },
      );
    }
    const sealOnly = sample / ((performance.now() - t0) / 1000);
    // The registry's writes alone, batched `concurrency` per transaction as CommandSender's group commit does.
    const t1 = performance.now();
    for (let i = 0; i < sample; i += init.concurrency) {
      const batch = ids.slice(i, Math.min(i + init.concurrency, sample));
      const seqs = await st.seq.allocateMany(batch);
      const records = batch.map((deviceId, j) => {
        const a = seqs[j];
        if (a === undefined || a instanceof Error) throw a ?? new Error('no seq');
        return {
          jti: randomUUID(),
          deviceId,
          action: 'update' as const,
          userId: 'bench',
          paramsDigest: 'x',
          seq: a.seq,
          encryptionKid: 'k',
          sealed: 'x',
          expiresAt: Date.now() + 300_000,
        };
      });
      await st.commands.recordMany(records);
      await st.commands.markSentMany(records.map((r) => r.jti));
    }
    const registryBatched = sample / ((performance.now() - t1) / 1000);
    reply({ op: 'parts', seal_only_per_s: sealOnly, registry_batched_per_s: registryBatched });
    return;
  }
  await close?.();
  process.exit(0);
}

process.on('message', (msg: SenderRequest) => {
  handle(msg).catch((err: unknown) => {
    reply({ op: 'error', message: err instanceof Error ? (err.stack ?? err.message) : String(err) });
    process.exitCode = 1;
    setTimeout(() => process.exit(1), 100);
  });
});
