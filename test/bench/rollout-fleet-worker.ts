/**
 * Worker thread of the rollout benchmark: the simulated fleet of
 * test/server/sim-fleet.ts (every board opens its command with the full
 * checks and answers with a signed, encrypted ack; signed presence reports),
 * on a core of its own while `serve` and aedes run in the main thread.
 *
 * Requests (postMessage), each answered with {id, ...}:
 *   {op: 'init', url, trust, serverId, count, idPrefix} -> {devices: [{id, signing, encryption}]} (public JWKs)
 *   {op: 'connect', ids, intervalSeconds}               -> {sentAt: {id: ms}} (when each connect report was sent)
 *   {op: 'disconnect', ids}                             -> {} (each sent its offline report)
 *   {op: 'received', ids}                               -> {received: {id: ms[]}} (when each command arrived)
 *   {op: 'close'}                                       -> {}
 */
import { parentPort } from 'node:worker_threads';
import { toPublicJwk, type JwkSet, type PublicJwk } from '../../protocol/index.js';
import { makeSimDevice, SimFleet, type SimDevice } from '../server/sim-fleet.js';

export type FleetRequest =
  | { op: 'init'; url: string; trust: JwkSet; serverId: string; count: number; idPrefix: string }
  | { op: 'connect'; ids: string[]; intervalSeconds: number }
  | { op: 'disconnect'; ids: string[] }
  | { op: 'received'; ids: string[] }
  | { op: 'close' };

export interface FleetReplies {
  init: { devices: { id: string; signing: PublicJwk; encryption: PublicJwk }[] };
  connect: { sentAt: Record<string, number> };
  disconnect: Record<string, never>;
  received: { received: Record<string, number[]> };
  close: Record<string, never>;
}

const port = parentPort;
let fleet: SimFleet | undefined;

async function inBatches(devices: SimDevice[], size: number, f: (d: SimDevice) => Promise<void>): Promise<void> {
  for (let i = 0; i < devices.length; i += size) await Promise.all(devices.slice(i, i + size).map(f));
}

function pick(ids: string[]): SimDevice[] {
  return ids.map((id) => {
    const d = fleet?.devices.get(id);
    if (!d) throw new Error(`no simulated device ${id}`);
    return d;
  });
}

async function handle(req: FleetRequest): Promise<unknown> {
  if (req.op === 'init') {
    fleet = await SimFleet.connect(req.url, { trust: req.trust, serverId: req.serverId });
    const devices: SimDevice[] = [];
    for (let i = 0; i < req.count; i += 100) {
      const n = Math.min(100, req.count - i);
      devices.push(...(await Promise.all(Array.from({ length: n }, (_, j) => makeSimDevice(`${req.idPrefix}${String(i + j).padStart(5, '0')}`)))));
    }
    for (const d of devices) fleet.add(d);
    return { devices: devices.map((d) => ({ id: d.id, signing: toPublicJwk(d.signing), encryption: toPublicJwk(d.encryption) })) };
  }
  if (!fleet) throw new Error('init first');
  const f = fleet;
  if (req.op === 'connect') {
    const sentAt: Record<string, number> = {};
    await inBatches(pick(req.ids), 50, async (d) => {
      sentAt[d.id] = Date.now();
      await f.connectDevice(d, { intervalSeconds: req.intervalSeconds });
    });
    return { sentAt };
  }
  if (req.op === 'disconnect') {
    await inBatches(pick(req.ids), 50, (d) => f.disconnectDevice(d));
    return {};
  }
  if (req.op === 'received') {
    return { received: Object.fromEntries(pick(req.ids).map((d) => [d.id, d.received.map((r) => r.at)])) };
  }
  await f.close();
  return {};
}

port?.on('message', (msg: { id: number; req: FleetRequest }) => {
  handle(msg.req).then(
    (reply) => port.postMessage({ id: msg.id, ok: true, reply }),
    (err: unknown) => port.postMessage({ id: msg.id, ok: false, error: err instanceof Error ? err.message : String(err) }),
  );
});
