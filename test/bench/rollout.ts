/**
 * Rollouts: `serve` (its engine, registry, sealing, ack and report handling)
 * and aedes in this process, the simulated fleet (test/server/sim-fleet.ts:
 * full command checks, signed encrypted acks and presence reports) in a worker
 * thread (rollout-fleet-worker.ts), so each side has a core on a 2-core board.
 * Three figures, each from a fresh rollout to every board:
 *   1. throughput: every board online, no rate limit, 64 in flight: commands
 *      applied per second from the rollout's start to its last ack;
 *   2. rate: the same with a rate set: the rate achieved against it;
 *   3. held delivery: 30% of the boards offline by their reports at the start;
 *      once the others applied, they all report connect at once: how long from
 *      each board's connect report to its command arriving (p50, max).
 */
import { Worker } from 'node:worker_threads';
import { toPublicJwk } from '../../protocol/index.js';
import { presenceOf } from '../../server/core/presence.js';
import { planRollout, startRollout, type RolloutRequest } from '../../server/rollouts/plan.js';
import { startFixture, type Fixture } from '../server/server-fixture.js';
import { eventually } from '../server/sim-fleet.js';
import { percentile } from './e2e.js';
import type { FleetReplies, FleetRequest } from './rollout-fleet-worker.js';

export interface RolloutFigures {
  boards: number;
  concurrency: number;
  /** 1: all online, no rate limit. */
  throughput: { applied: number; seconds: number; applied_per_s: number };
  /** 2: a rate set. */
  rate: { set_per_min: number; sent: number; achieved_per_min: number; busiest_second: number; ratio: number };
  /** 3: the offline share reporting connect at once after the others applied. */
  held: {
    offline: number;
    served: number;
    connect_reports_s: number;
    p50_ms: number;
    max_ms: number;
    /** From the first connect report to the last board served. */
    all_served_s: number;
  };
}

const round = (x: number, digits = 1): number => Math.round(x * 10 ** digits) / 10 ** digits;

class FleetWorker {
  readonly #worker: Worker;
  #next = 0;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  constructor() {
    this.#worker = new Worker(new URL('./rollout-fleet-worker.js', import.meta.url));
    this.#worker.on('message', (m: { id: number; ok: boolean; reply?: unknown; error?: string }) => {
      const p = this.#pending.get(m.id);
      this.#pending.delete(m.id);
      if (m.ok) p?.resolve(m.reply);
      else p?.reject(new Error(m.error));
    });
    this.#worker.on('error', (err) => {
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
    });
  }

  call<R extends FleetRequest>(req: R): Promise<FleetReplies[R['op']]> {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#worker.postMessage({ id, req });
    });
  }

  async close(): Promise<void> {
    await this.call({ op: 'close' }).catch(() => undefined);
    await this.#worker.terminate();
  }
}

export async function benchRollout(options: { boards: number; ratePerMin: number; concurrency: number; log: (s: string) => void }): Promise<RolloutFigures> {
  const { boards, concurrency } = options;
  const f: Fixture = await startFixture();
  // The fixture's own fleet (every command topic) is not used here.
  await f.fleet.close();
  const fleet = new FleetWorker();
  try {
    const storage = f.server.data.storage;
    const { devices } = await fleet.call({
      op: 'init',
      url: f.broker.url,
      trust: f.server.data.keys.trust,
      serverId: f.server.data.keys.serverId,
      count: boards,
      idPrefix: 'bench-',
    });
    for (const d of devices) {
      await storage.devices.add({
        id: d.id,
        userId: 'bench',
        origin: 'jwks',
        signing: d.signing,
        encryption: toPublicJwk(d.encryption),
        state: 'provisioned',
      });
      await storage.devices.addTags(d.id, ['bench']);
    }
    const ids = devices.map((d) => d.id);
    const online = (want: number): Promise<boolean> =>
      eventually(
        async () => {
          const now = Date.now();
          return (await storage.devices.list({ tag: 'bench' })).filter((d) => presenceOf(d.presence, now) === 'online').length === want;
        },
        60_000,
        `${want} boards online by their reports`,
      );
    await fleet.call({ op: 'connect', ids, intervalSeconds: 600 });
    await online(boards);

    const run = async (req: Partial<RolloutRequest>, what: string): Promise<{ id: string; startedAt: number }> => {
      const startedAt = Date.now();
      const r = await startRollout(
        storage,
        await planRollout(storage, f.server.data.keys, { action: 'selftest', selector: { tag: 'bench' }, concurrency, ...req }),
      );
      f.server.rollouts?.kick();
      await eventually(async () => (await storage.rollouts.require(r.id)).finishedAt !== null, 300_000, what);
      return { id: r.id, startedAt };
    };

    // 1. Throughput.
    options.log(`  throughput: ${boards} boards online, no rate limit, ${concurrency} in flight ...`);
    const t = await run({}, 'the throughput rollout finished');
    const tCommands = await storage.commands.list({ fanoutId: t.id, limit: 100_000 });
    const lastAck = Math.max(...tCommands.map((c) => c.ackedAt ?? 0));
    const applied = (await storage.rollouts.counts(t.id)).applied;
    const seconds = (lastAck - t.startedAt) / 1000;
    const throughput = { applied, seconds: round(seconds, 2), applied_per_s: round(applied / seconds) };

    // 2. Rate.
    options.log(`  rate: ${boards} boards at ${options.ratePerMin}/min ...`);
    const rr = await run({ ratePerMin: options.ratePerMin }, 'the rate-limited rollout finished');
    const sealedAt = (await storage.commands.list({ fanoutId: rr.id, limit: 100_000 })).map((c) => c.createdAt).sort((a, b) => a - b);
    const first = sealedAt[0] as number;
    const last = sealedAt[sealedAt.length - 1] as number;
    // The bucket starts with one command: after it, `rate` a minute.
    const achieved = sealedAt.length > 1 ? ((sealedAt.length - 1) * 60_000) / (last - first) : NaN;
    let busiest = 0;
    for (let i = 0, j = 0; i < sealedAt.length; i++) {
      while ((sealedAt[i] as number) - (sealedAt[j] as number) >= 1000) j++;
      busiest = Math.max(busiest, i - j + 1);
    }
    const rate = {
      set_per_min: options.ratePerMin,
      sent: sealedAt.length,
      achieved_per_min: round(achieved),
      busiest_second: busiest,
      ratio: round(achieved / options.ratePerMin, 3),
    };

    // 3. Held delivery: 30% offline at the start, back all at once.
    const away = ids.filter((_, i) => i % 10 < 3);
    options.log(`  held delivery: ${away.length} of ${boards} boards offline, back once the others applied ...`);
    await fleet.call({ op: 'disconnect', ids: away });
    await online(boards - away.length);
    const startedAt = Date.now();
    const r = await startRollout(storage, await planRollout(storage, f.server.data.keys, { action: 'selftest', selector: { tag: 'bench' }, concurrency }));
    f.server.rollouts?.kick();
    await eventually(async () => (await storage.rollouts.counts(r.id)).applied === boards - away.length, 300_000, 'the online boards applied');
    if ((await storage.rollouts.counts(r.id)).sent + (await storage.rollouts.counts(r.id)).sending > 0)
      throw new Error('a board offline by its report was sent to');
    const { sentAt } = await fleet.call({ op: 'connect', ids: away, intervalSeconds: 600 });
    await eventually(async () => (await storage.rollouts.require(r.id)).finishedAt !== null, 300_000, 'the held rollout finished');
    const { received } = await fleet.call({ op: 'received', ids: away });
    const lags: number[] = [];
    let lastServed = 0;
    for (const id of away) {
      const back = sentAt[id] as number;
      const at = (received[id] ?? []).find((x) => x >= back);
      if (at === undefined) continue;
      lags.push(at - back);
      lastServed = Math.max(lastServed, at);
    }
    lags.sort((a, b) => a - b);
    const backTimes = Object.values(sentAt);
    const firstBack = Math.min(...backTimes);
    const held = {
      offline: away.length,
      served: lags.length,
      connect_reports_s: round((Math.max(...backTimes) - firstBack) / 1000, 2),
      p50_ms: percentile(lags, 50),
      max_ms: lags[lags.length - 1] ?? NaN,
      all_served_s: round((lastServed - firstBack) / 1000, 2),
    };
    options.log(`  (held rollout: ${round((Date.now() - startedAt) / 1000, 1)} s in all)`);
    return { boards, concurrency, throughput, rate, held };
  } finally {
    await fleet.close();
    await f.close();
  }
}
