/**
 * `send` to many devices (--all, --user, --tag) or with a delivery deadline:
 * a rollout. With --dry-run only the plan is printed. Otherwise the rollout is
 * recorded and followed: when a `serve` holds the engine lease it drives the
 * rollout and this process watches; when none runs, this process drives it
 * (its own MQTT session, taking acks and reports) while it watches, and what
 * is left (boards offline) stays for `serve` or `rollout resume`.
 */
import { createInterface } from 'node:readline/promises';
import { CodedError } from '../../protocol/index.js';
import type { BrokerSettings, OpenedData } from '../data-dir.js';
import { silentLogger, type Logger } from '../../lib/log.js';
import { ROLLOUT_LEASE, RolloutEngine } from '../rollouts/engine.js';
import { planRollout, startRollout, type RolloutRequest } from '../rollouts/plan.js';
import { formatPlan, formatRolloutSummary, planView, progressBar, progressOf, rolloutView } from '../rollouts/rollout-views.js';
import { watchRollout } from '../rollouts/watch.js';
import { checkConfirmation, needsConfirmation } from '../rollouts/confirm.js';
import { ProgressLines } from '../rollouts/progress.js';
import { planWarnings } from '../rollouts/warnings.js';
import { openSendSession } from '../core/send-session.js';

export interface RolloutCliOptions {
  data: OpenedData;
  broker: BrokerSettings;
  request: RolloutRequest;
  dryRun: boolean;
  json: boolean;
  ackTimeoutMs: number;
  sealWorkers: number;
  /** --yes: a destructive action to many devices is confirmed (confirm.ts). */
  yes: boolean;
  /** A progress line on stderr this often while following (0: none). */
  progressIntervalMs: number;
  log?: Logger;
}

/** Plans, and unless a dry run, records and follows the rollout. Returns the exit status: 0 when every target applied, else 6. */
export async function runRolloutCli(o: RolloutCliOptions): Promise<number> {
  const plan = await planRollout(o.data.storage, o.data.keys, o.request);
  for (const w of planWarnings(plan)) process.stderr.write(`warning: ${w}\n`);
  if (o.dryRun) {
    process.stdout.write(o.json ? `${JSON.stringify({ ...planView(plan), warnings: planWarnings(plan) }, null, 2)}\n` : formatPlan(plan));
    return 0;
  }
  if (plan.summary.targets === 0) throw new CodedError('E_USAGE', 'no device matches: nothing to send');
  await confirmCli(plan.spec.action, plan.summary.targets, o.yes);
  return followRollout({ ...o, start: async () => (await startRollout(o.data.storage, plan)).id });
}

/**
 * Refuses (E_CONFIRM) a destructive action to many devices without --yes; at a
 * terminal (stdin and stderr both), typing the device count confirms instead.
 */
export async function confirmCli(action: string, count: number, yes: boolean): Promise<void> {
  if (!needsConfirmation(action, count) || yes) return;
  const terminal = process.stdin.isTTY && process.stderr.isTTY;
  if (terminal) {
    const rl = createInterface({ input: process.stdin, output: process.stderr });
    try {
      const answer = await rl.question(`${action} to ${count} devices wipes their keys and decommissions them. Type ${count} to confirm: `);
      if (answer.trim() === String(count)) return;
    } finally {
      rl.close();
    }
  }
  checkConfirmation(action, count, undefined, `--yes${terminal ? ` (or type ${count} when asked)` : ''}`);
}

export interface FollowOptions {
  data: OpenedData;
  broker: BrokerSettings;
  /** Records the rollout (after the broker connection is up) and returns its id. */
  start: () => string | Promise<string>;
  json: boolean;
  ackTimeoutMs: number;
  sealWorkers: number;
  /** A progress line on stderr this often (default 5 s; 0: none). */
  progressIntervalMs?: number;
  log?: Logger;
}

export const DEFAULT_PROGRESS_INTERVAL_MS = 5000;

/**
 * Follows a rollout until nothing more is to be waited for (watch.ts), with an
 * engine of its own: it drives the rollouts while no `serve` holds the lease,
 * and takes over if that lease lapses. Prints the summary; returns 0 when
 * every target applied, else 6.
 */
export async function followRollout(o: FollowOptions): Promise<number> {
  const { data } = o;
  const store = data.storage.rollouts;
  let engine: RolloutEngine | undefined;
  const client = await openSendSession(data, o.broker, {
    acksOf: 'all',
    sealWorkers: o.sealWorkers,
    onReport: (deviceId, claims) => engine?.onReport(deviceId, claims),
    ...(o.log ? { log: o.log } : {}),
  });
  // Ctrl-C stops following, never the recording of the targets (o.start): a rollout left planning would never be driven.
  const stop = new AbortController();
  const onSigint = (): void => stop.abort();
  process.once('SIGINT', onSigint);
  try {
    const id = await o.start();
    const holder = await data.storage.leases.holder(ROLLOUT_LEASE);
    engine = new RolloutEngine({ storage: data.storage, sender: client.sender, log: o.log ?? silentLogger, holder: `send-${process.pid}` });
    engine.start();
    const r = await store.require(id);
    const total = progressOf(await store.counts(id)).total;
    process.stderr.write(
      `rollout ${r.id}: ${r.action} to ${total} device(s), ${holder ? `driven by ${holder}` : 'driven by this process (no serve running)'}\n`,
    );
    const tty = process.stderr.isTTY;
    const intervalMs = o.progressIntervalMs ?? DEFAULT_PROGRESS_INTERVAL_MS;
    // A line every interval (a log, CI); at a terminal the bar in between, cleared before each line.
    const lines = intervalMs > 0 ? new ProgressLines(r.id, intervalMs, (line) => process.stderr.write(`${tty ? '\r\x1b[K' : ''}${line}\n`)) : undefined;
    await watchRollout(store, r.id, {
      ackTimeoutMs: o.ackTimeoutMs,
      signal: stop.signal,
      onProgress: (done, all, counts) => {
        lines?.update(counts);
        if (tty) process.stderr.write(`\r${progressBar(done, all)}`);
      },
    });
    if (tty) process.stderr.write('\n');
    await engine.stop();
    const final = await store.require(r.id);
    const counts = await store.counts(r.id);
    if (o.json) process.stdout.write(`${JSON.stringify(rolloutView(final, counts, await store.targets(r.id)), null, 2)}\n`);
    else
      process.stdout.write(
        formatRolloutSummary(
          final,
          counts,
          await store.targets(r.id, { states: ['pending', 'sending', 'sent', 'rejected', 'failed', 'rolled_back', 'expired', 'cancelled', 'not sent'] }),
        ),
      );
    return counts.applied === total ? 0 : 6;
  } finally {
    process.removeListener('SIGINT', onSigint);
    await engine?.stop();
    await client.close();
  }
}
