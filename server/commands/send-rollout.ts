/**
 * `send` to many devices (--all, --user, --tag) or with a delivery deadline:
 * a rollout. With --dry-run only the plan is printed. Otherwise the rollout is
 * recorded and followed: when a `serve` holds the engine lease it drives the
 * rollout and this process watches; when none runs, this process drives it
 * (its own MQTT session, taking acks and reports) while it watches, and what
 * is left (boards offline) stays for `serve` or `rollout resume`.
 */
import { CodedError } from '../../protocol/index.js';
import type { BrokerSettings, OpenedData } from '../data-dir.js';
import { silentLogger, type Logger } from '../../lib/log.js';
import { progressBar } from '../fanout.js';
import { RolloutStore } from '../registry/rollouts.js';
import { ROLLOUT_LEASE, RolloutEngine } from '../rollouts/engine.js';
import { planRollout, startRollout, type RolloutRequest } from '../rollouts/plan.js';
import { formatPlan, formatRolloutSummary, planView, progressOf, rolloutView } from '../rollouts/views.js';
import { watchRollout } from '../rollouts/watch.js';
import { openSendClient } from '../send-client.js';

export interface RolloutCliOptions {
  data: OpenedData;
  broker: BrokerSettings;
  request: RolloutRequest;
  dryRun: boolean;
  json: boolean;
  ackTimeoutMs: number;
  sealWorkers: number;
  log?: Logger;
}

/** Plans, and unless a dry run, records and follows the rollout. Returns the exit status: 0 when every target applied, else 6. */
export async function runRolloutCli(o: RolloutCliOptions): Promise<number> {
  const plan = await planRollout(o.data.registry, o.data.keys, o.request);
  if (o.dryRun) {
    process.stdout.write(o.json ? `${JSON.stringify(planView(plan), null, 2)}\n` : formatPlan(plan));
    return 0;
  }
  if (plan.summary.targets === 0) throw new CodedError('E_USAGE', 'no device matches: nothing to send');
  return followRollout({ ...o, start: async () => (await startRollout(o.data.registry, plan)).id });
}

export interface FollowOptions {
  data: OpenedData;
  broker: BrokerSettings;
  /** Records the rollout (after the broker connection is up) and returns its id. */
  start: () => string | Promise<string>;
  json: boolean;
  ackTimeoutMs: number;
  sealWorkers: number;
  log?: Logger;
}

/**
 * Follows a rollout until nothing more is to be waited for (watch.ts), with an
 * engine of its own: it drives the rollouts while no `serve` holds the lease,
 * and takes over if that lease lapses. Prints the summary; returns 0 when
 * every target applied, else 6.
 */
export async function followRollout(o: FollowOptions): Promise<number> {
  const { data } = o;
  const store = new RolloutStore(data.registry);
  let engine: RolloutEngine | undefined;
  const client = await openSendClient(data, o.broker, {
    acksOf: 'all',
    sealWorkers: o.sealWorkers,
    onReport: (deviceId, claims) => engine?.onReport(deviceId, claims),
    ...(o.log ? { log: o.log } : {}),
  });
  try {
    const id = await o.start();
    const holder = store.leaseHolder(ROLLOUT_LEASE);
    engine = new RolloutEngine({ registry: data.registry, sender: client.sender, log: o.log ?? silentLogger, holder: `send-${process.pid}` });
    engine.start();
    const r = store.require(id);
    const total = progressOf(store.counts(id)).total;
    process.stderr.write(
      `rollout ${r.id}: ${r.action} to ${total} device(s), ${holder ? `driven by ${holder}` : 'driven by this process (no serve running)'}\n`,
    );
    const tty = process.stderr.isTTY;
    const stop = new AbortController();
    const onSigint = (): void => stop.abort();
    process.once('SIGINT', onSigint);
    await watchRollout(store, r.id, {
      ackTimeoutMs: o.ackTimeoutMs,
      signal: stop.signal,
      ...(tty ? { onProgress: (done: number, all: number) => process.stderr.write(`\r${progressBar(done, all)}`) } : {}),
    }).finally(() => process.removeListener('SIGINT', onSigint));
    if (tty) process.stderr.write('\n');
    await engine.stop();
    const final = store.require(r.id);
    const counts = store.counts(r.id);
    if (o.json) process.stdout.write(`${JSON.stringify(rolloutView(final, counts, store.targets(r.id)), null, 2)}\n`);
    else
      process.stdout.write(
        formatRolloutSummary(
          final,
          counts,
          store.targets(r.id, { states: ['pending', 'sending', 'sent', 'rejected', 'failed', 'expired', 'cancelled', 'not sent'] }),
        ),
      );
    return counts.applied === total ? 0 : 6;
  } finally {
    await engine?.stop();
    await client.close();
  }
}
