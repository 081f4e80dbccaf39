/**
 * The rollout engine: drives every unfinished rollout in the registry, one
 * engine at a time (the `rollouts` lease; `serve` holds it, or `send` while no
 * `serve` runs). Each step of a running rollout, in order:
 *
 * 1. Past its deadline: every target not final is `expired`; nothing is sent.
 * 2. Answers: a target whose command was acked takes the ack's status. One
 *    refused `E_EXPIRED` (it reached the board after its own short `exp`,
 *    e.g. queued while the board was away) goes back to pending: the board
 *    decided that command, so a fresh one (new seq and jti) is sealed when the
 *    board is online again. Exactly once holds by the board's seq check.
 * 3. Abort: failures (rejected + failed) at or above the rollout's percentage,
 *    once it has its minimum of results: the rollout is aborted before any
 *    further send, and its pending targets are cancelled.
 * 4. Sends: a token bucket at the current rate (the ramp's, up to --rate; one
 *    second's worth at most, the rate step), bounded by the commands in flight,
 *    to pending targets whose device is online by its signed reports (or never
 *    reported: agents without reports are sent to as before). Each command's
 *    `exp` is min(now + ttl, deadline).
 *
 * A device that reports in after a connect gets its expired, unanswered
 * commands re-published as sealed (same jti and seq: it applies them at most
 * once, and answers E_EXPIRED for what came too late), then a fresh delivery.
 */
import { randomUUID } from 'node:crypto';
import { type Action, isCodedError, type ReportClaims } from '../../protocol/index.js';
import type { CommandSender } from '../command-sender.js';
import type { Logger } from '../../lib/log.js';
import type { Registry } from '../registry/registry.js';
import { RolloutStore, type RolloutRecord, type TargetCounts } from '../registry/rollouts.js';

export const ROLLOUT_LEASE = 'rollouts';
export const LEASE_TTL_MS = 10_000;
export const DEFAULT_TICK_MS = 200;
/** At most this many commands sealed per rollout per step. */
const MAX_BATCH = 256;

export interface EngineOptions {
  registry: Registry;
  sender: CommandSender;
  log: Logger;
  /** Who holds the lease (log lines, `rollout list`). */
  holder?: string;
  tickMs?: number;
}

/** The rate (commands/min) a rollout sends at now: its ramp's stage, capped at its rate; undefined: no limit. */
export function currentRate(r: Pick<RolloutRecord, 'ratePerMin' | 'rampFrom' | 'rampFactor'>, applied: number): number | undefined {
  if (r.rampFrom === undefined) return r.ratePerMin;
  const max = r.ratePerMin ?? Number.POSITIVE_INFINITY;
  const factor = r.rampFactor ?? 2;
  let rate = r.rampFrom;
  let left = applied;
  while (rate < max && left >= rate) {
    left -= rate;
    rate *= factor;
  }
  return Math.min(rate, max);
}

/** Whether a rollout's abort rule trips on these counts. */
export function abortTrips(r: Pick<RolloutRecord, 'abortPercent' | 'abortMin'>, counts: TargetCounts): { bad: number; results: number } | undefined {
  if (r.abortPercent === undefined) return undefined;
  const bad = counts.rejected + counts.failed;
  const results = counts.applied + bad;
  return results >= r.abortMin && results > 0 && bad * 100 >= r.abortPercent * results ? { bad, results } : undefined;
}

export class RolloutEngine {
  readonly store: RolloutStore;
  readonly holder: string;
  readonly #registry: Registry;
  readonly #sender: CommandSender;
  readonly #log: Logger;
  readonly #tickMs: number;
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  readonly #republish = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #again = false;
  #stopped = false;
  #leased = false;
  #reconciled = false;

  constructor(options: EngineOptions) {
    this.#registry = options.registry;
    this.#sender = options.sender;
    this.#log = options.log;
    this.#tickMs = options.tickMs ?? DEFAULT_TICK_MS;
    this.holder = options.holder ?? `engine-${process.pid}-${randomUUID().slice(0, 8)}`;
    this.store = new RolloutStore(this.#registry);
  }

  get leased(): boolean {
    return this.#leased;
  }

  start(): void {
    this.#stopped = false;
    this.#timer = setInterval(() => this.kick(), this.#tickMs);
    this.#timer.unref();
    this.kick();
  }

  /** Runs a step soon (after the one in progress). */
  kick(): void {
    if (this.#stopped) return;
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#running = this.#tick()
      .catch((err: unknown) => this.#log.error('rollout.engine_error', { reason: err instanceof Error ? err.message : String(err) }))
      .finally(() => {
        this.#running = undefined;
        if (this.#again) {
          this.#again = false;
          this.kick();
        }
      });
  }

  /** A device reported in: after a connect, its expired unanswered commands are re-published; then a step. */
  onReport(deviceId: string, claims: Pick<ReportClaims, 'reason'>): void {
    if (claims.reason === 'connect') this.#republish.add(deviceId);
    this.kick();
  }

  /** Resolves when the step in progress (if any) has finished. */
  async idle(): Promise<void> {
    while (this.#running) await this.#running;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.idle();
    if (this.#leased) this.store.releaseLease(ROLLOUT_LEASE, this.holder);
    this.#leased = false;
  }

  async #tick(): Promise<void> {
    const leased = this.store.takeLease(ROLLOUT_LEASE, this.holder, LEASE_TTL_MS);
    if (leased !== this.#leased) this.#log.info(leased ? 'rollout.lease_taken' : 'rollout.lease_lost', { holder: this.holder });
    this.#leased = leased;
    if (!leased) return;
    if (!this.#reconciled) {
      this.#reconciled = true;
      await this.#reconcile();
    }
    await this.#republishExpired();
    for (const r of this.store.list({ unfinished: true, limit: 10_000 })) {
      if (this.#stopped) return;
      await this.#step(r);
    }
  }

  /**
   * When this engine takes over (the first lease): a target left `sending` by a
   * crash adopts its recorded command or is pending again, and every command
   * sent and unanswered, still valid, is re-published as sealed (the previous
   * driver may have stopped between recording it and publishing it; the same
   * jti and seq are applied at most once).
   */
  async #reconcile(): Promise<void> {
    const now = this.#registry.now();
    for (const r of this.store.list({ unfinished: true, limit: 10_000 })) {
      for (const t of this.store.targets(r.id, { states: ['sending'] })) {
        const recorded = this.#registry.listCommands({ deviceId: t.deviceId, fanoutId: r.id, limit: 1 })[0];
        if (recorded && recorded.ackStatus === null) this.store.move(r.id, t.deviceId, ['sending'], 'sent', { jti: recorded.jti, sent: true });
        else this.store.move(r.id, t.deviceId, ['sending'], 'pending');
      }
      for (const t of this.store.targets(r.id, { states: ['sent'] })) {
        const c = t.jti === null ? undefined : this.#registry.getCommand(t.jti);
        const sealed = c && c.ackStatus === null && c.expiresAt > now ? this.#registry.sealedCommand(c.jti) : undefined;
        if (!c || sealed === undefined) continue;
        await this.#sender
          .publish(c.deviceId, c.jti, sealed)
          .catch((err: unknown) =>
            this.#log.warn('rollout.republish_failed', { device: c.deviceId, jti: c.jti, reason: err instanceof Error ? err.message : String(err) }),
          );
      }
    }
  }

  async #republishExpired(): Promise<void> {
    if (this.#republish.size === 0) return;
    const devices = [...this.#republish];
    this.#republish.clear();
    const now = this.#registry.now();
    for (const deviceId of devices) {
      for (const { jti } of this.store.unansweredExpired(deviceId, now)) {
        const sealed = this.#registry.sealedCommand(jti);
        if (sealed === undefined) continue;
        await this.#sender.publish(deviceId, jti, sealed).then(
          () => this.#log.info('rollout.republished', { device: deviceId, jti }),
          (err: unknown) => this.#log.warn('rollout.republish_failed', { device: deviceId, jti, reason: err instanceof Error ? err.message : String(err) }),
        );
      }
    }
  }

  async #step(listed: RolloutRecord): Promise<void> {
    // Read again: a pause or cancel may have landed since the tick listed the rollouts
    // (an HTTP request handled while an earlier rollout was sealing, or the CLI).
    const r = this.store.get(listed.id);
    if (!r || r.finishedAt !== null) return;
    const now = this.#registry.now();
    if (now >= r.deadlineAt) {
      const expired = this.store.expireAll(r.id);
      this.#buckets.delete(r.id);
      this.store.finish(r.id, r.state === 'running' || r.state === 'paused' ? 'completed' : r.state, `deadline passed (${expired} target(s) expired)`);
      this.#log.info('rollout.deadline', { rollout: r.id, expired });
      return;
    }
    for (const a of this.store.answered(r.id)) {
      if (a.status === 'rejected' && a.code === 'E_EXPIRED') {
        // The board decided that command too late to apply it: a fresh one when it is back (a rollout
        // that is aborted or cancelled sends nothing more: that target is cancelled).
        const again = r.state === 'running' || r.state === 'paused';
        this.store.move(r.id, a.deviceId, ['sent'], again ? 'pending' : 'cancelled', { jti: null, code: again ? 'E_EXPIRED' : `E_${r.state.toUpperCase()}` });
      } else {
        this.store.move(r.id, a.deviceId, ['sent'], a.status, { code: a.code });
      }
    }
    let counts = this.store.counts(r.id);
    let state = r.state;
    const trip = state === 'running' ? abortTrips(r, counts) : undefined;
    if (trip) {
      const reason = `${trip.bad} of ${trip.results} results rejected or failed (abort at ${r.abortPercent}% after ${r.abortMin})`;
      this.store.setState(r.id, ['running'], 'aborted', reason, this.holder);
      this.#log.warn('rollout.aborted', { rollout: r.id, reason });
      state = 'aborted';
      counts = this.store.counts(r.id);
    }
    if (state === 'running') {
      await this.#send(r, counts, now);
      counts = this.store.counts(r.id);
    }
    if (counts.pending + counts.sending + counts.sent === 0 && state !== 'paused') {
      this.#buckets.delete(r.id);
      this.store.finish(r.id, state === 'running' ? 'completed' : state, 'every target answered or ended');
      this.#log.info('rollout.finished', { rollout: r.id, state: state === 'running' ? 'completed' : state, applied: counts.applied });
    }
  }

  async #send(r: RolloutRecord, counts: TargetCounts, now: number): Promise<void> {
    const rate = currentRate(r, counts.applied);
    let allowance = MAX_BATCH;
    let bucket: { tokens: number; at: number } | undefined;
    if (rate !== undefined) {
      // One rate step: a second's worth of sends (at least one).
      const cap = Math.max(1, rate / 60);
      bucket = this.#buckets.get(r.id) ?? { tokens: 1, at: now };
      bucket.tokens = Math.min(cap, bucket.tokens + ((now - bucket.at) * rate) / 60_000);
      bucket.at = now;
      this.#buckets.set(r.id, bucket);
      allowance = Math.min(allowance, Math.floor(bucket.tokens));
    }
    const room = r.concurrency - this.store.inFlight(r.id, now);
    const batch = this.store.deliverable(r.id, now, Math.min(allowance, room));
    const claimed = batch.filter((t) => this.store.claim(r.id, t.deviceId));
    if (bucket) bucket.tokens -= claimed.length;
    await Promise.all(claimed.map((t) => this.#deliver(r, t.deviceId, now)));
  }

  async #deliver(r: RolloutRecord, deviceId: string, now: number): Promise<void> {
    const ttlSeconds = Math.min(r.ttlSeconds, Math.floor((r.deadlineAt - now) / 1000));
    if (ttlSeconds < 1) {
      this.store.move(r.id, deviceId, ['sending'], 'expired', { code: 'E_DEADLINE' });
      return;
    }
    let sealed: { jti: string; token: string };
    try {
      const { command, token } = await this.#sender.seal({
        deviceId,
        action: r.action as Action,
        params: r.params,
        ...(r.userId !== undefined ? { userId: r.userId } : {}),
        ttlSeconds,
        fanoutId: r.id,
      });
      sealed = { jti: command.jti, token };
      this.store.move(r.id, deviceId, ['sending'], 'sent', { jti: command.jti, sent: true });
    } catch (err) {
      const code = isCodedError(err) ? err.code : 'E_INTERNAL';
      this.store.move(r.id, deviceId, ['sending'], 'not sent', { code });
      this.#log.warn('rollout.not_sent', { rollout: r.id, device: deviceId, code, reason: err instanceof Error ? err.message : String(err) });
      return;
    }
    // Recorded before it is published: a failed publish is re-published when the board next connects.
    await this.#sender.publish(deviceId, sealed.jti, sealed.token).catch((err: unknown) =>
      this.#log.warn('rollout.publish_failed', {
        rollout: r.id,
        device: deviceId,
        jti: sealed.jti,
        reason: err instanceof Error ? err.message : String(err),
      }),
    );
  }
}
