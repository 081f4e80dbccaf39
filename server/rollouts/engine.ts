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
 *    board is online again, after a backoff (RESEND_BACKOFF_MS, doubling), at
 *    most MAX_SEND_ATTEMPTS commands in all: then the target is `failed`
 *    E_EXPIRED_REPEATEDLY (a board whose clock is wrong, or a hostile one).
 *    Exactly once holds by the board's seq check.
 * 3. Abort: failures (rejected + failed + rolled_back) at or above the rollout's percentage,
 *    once it has its minimum of results: the rollout is aborted before any
 *    further send, and its pending targets are cancelled.
 * 4. Sends: a token bucket at the current rate (the ramp's, up to --rate; one
 *    second's worth at most, the rate step), bounded by the commands in flight,
 *    to pending targets whose device is online by its signed reports (or never
 *    reported: agents without reports are sent to as before). Each command's
 *    `exp` is min(now + ttl, deadline).
 *
 * A device that reports in after a connect gets its expired, unanswered
 * commands of running rollouts re-published as sealed (same jti and seq: it
 * applies them at most once, and answers E_EXPIRED for what came too late),
 * then a fresh delivery. Nothing of a rollout that is not running is
 * published again.
 *
 * Fencing: the lease has a generation, new each time the lease changes hands
 * (or lapses). A claim (pending -> sending) and the mark-sent (sending -> sent,
 * with the jti) each check holder, generation and expiry in their own
 * transaction; a command is published only after its mark-sent succeeded, and
 * the lease is checked again right before. An engine that stalled past its
 * lease (another took over) publishes nothing more: its targets are the new
 * holder's (which adopts a command already recorded for one, or seals a fresh
 * one), and what it sealed that was not adopted is voided, never published.
 */
import { randomUUID } from 'node:crypto';
import { type Action, isCodedError, type ReportClaims } from '../../protocol/index.js';
import type { CommandSender } from '../core/command-sender.js';
import type { Logger } from '../../lib/log.js';
import type { Lease, RolloutRecord, TargetCounts } from '../storage/records.js';
import { logStorageError } from '../storage-error.js';
import type { Storage } from '../storage/types.js';

export const ROLLOUT_LEASE = 'rollouts';
export const LEASE_TTL_MS = 10_000;
export const DEFAULT_TICK_MS = 200;
/** At most this many commands sealed per rollout per step. */
const MAX_BATCH = 256;
/**
 * Commands sealed for one target at most (the first and its re-sends): a board
 * that refuses each as expired (`E_EXPIRED`: its clock runs ahead, or it lies)
 * is then marked `failed` with E_EXPIRED_REPEATEDLY instead of being sent a
 * fresh command, new seq and row, at every refusal.
 */
export const MAX_SEND_ATTEMPTS = 4;
/** The wait before the first re-send after an `E_EXPIRED`; it doubles with each further one (5 s, 10 s, 20 s). */
export const RESEND_BACKOFF_MS = 5_000;
/** The code of a target failed for refusing MAX_SEND_ATTEMPTS commands as expired. */
export const E_EXPIRED_REPEATEDLY = 'E_EXPIRED_REPEATEDLY';

/** How long a target waits before its next command, after `attempts` commands refused as expired. */
export function resendBackoffMs(attempts: number): number {
  return RESEND_BACKOFF_MS * 2 ** Math.max(0, attempts - 1);
}

export interface EngineOptions {
  storage: Storage;
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
  // An upgrade rolled back by the board (its health gate failed) is a failure like any other.
  const bad = counts.rejected + counts.failed + counts.rolled_back;
  const results = counts.applied + bad;
  return results >= r.abortMin && results > 0 && bad * 100 >= r.abortPercent * results ? { bad, results } : undefined;
}

export class RolloutEngine {
  readonly storage: Storage;
  readonly holder: string;
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
  /** The lease generation this engine last reconciled under. */
  #reconciledAt: number | undefined;

  constructor(options: EngineOptions) {
    this.storage = options.storage;
    this.#sender = options.sender;
    this.#log = options.log;
    this.#tickMs = options.tickMs ?? DEFAULT_TICK_MS;
    this.holder = options.holder ?? `engine-${process.pid}-${randomUUID().slice(0, 8)}`;
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

  /** Runs a step soon (after the one in progress: never two at once, each step awaits the storage). */
  kick(): void {
    if (this.#stopped) return;
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#running = this.#tick()
      .catch((err: unknown) => {
        // A storage error (a lost connection) fails this step only: the next tick tries again.
        if (isCodedError(err) && err.code === 'E_STORAGE_UNAVAILABLE') logStorageError(this.#log, err, { in: 'rollout.engine' });
        else this.#log.error('rollout.engine_error', { reason: err instanceof Error ? err.message : String(err) });
      })
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

  /** Stops the timer and waits for the step in progress; then lets the lease go. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.idle();
    if (this.#leased && this.storage.open) {
      await this.storage.leases.release(ROLLOUT_LEASE, this.holder).catch((err: unknown) => logStorageError(this.#log, err, { in: 'rollout.stop' }));
    }
    this.#leased = false;
  }

  async #tick(): Promise<void> {
    if (!this.storage.open) return;
    const lease = await this.storage.leases.take(ROLLOUT_LEASE, this.holder, LEASE_TTL_MS);
    const leased = lease !== undefined;
    if (leased !== this.#leased) this.#log.info(leased ? 'rollout.lease_taken' : 'rollout.lease_lost', { holder: this.holder, generation: lease?.generation });
    this.#leased = leased;
    if (!lease) return;
    if (this.#reconciledAt !== lease.generation) {
      // A new generation: this engine took the lease over (or took it back after it lapsed).
      this.#reconciledAt = lease.generation;
      await this.#reconcile(lease);
    }
    await this.#republishExpired(lease);
    for (const r of await this.storage.rollouts.list({ unfinished: true, limit: 10_000 })) {
      if (this.#stopped || !(await this.#holds(lease))) return;
      await this.#step(r, lease);
    }
  }

  /** Whether this engine still holds `lease` (then renewed); logs when it lost it (what it has in hand is dropped). */
  async #holds(lease: Lease): Promise<boolean> {
    if (await this.storage.leases.renew(lease)) return true;
    if (this.#leased)
      this.#log.warn('rollout.lease_lost', {
        holder: this.holder,
        generation: lease.generation,
        reason: 'the lease lapsed mid-step: nothing more is published',
      });
    this.#leased = false;
    return false;
  }

  /** Publishes a sealed command, only while this engine holds `lease` (checked right before). */
  async #publish(lease: Lease, deviceId: string, jti: string, token: string, rollout?: string): Promise<boolean> {
    if (!(await this.#holds(lease))) {
      this.#log.warn('rollout.fenced', { ...(rollout ? { rollout } : {}), device: deviceId, jti, reason: 'lease lost: not published' });
      return false;
    }
    try {
      await this.#sender.publish(deviceId, jti, token);
      return true;
    } catch (err) {
      this.#log.warn(rollout ? 'rollout.publish_failed' : 'rollout.republish_failed', {
        ...(rollout ? { rollout } : {}),
        device: deviceId,
        jti,
        reason: err instanceof Error ? err.message : String(err),
      });
      return true;
    }
  }

  /**
   * When this engine takes the lease (a new generation): each target its
   * predecessor left `sending` adopts the command recorded for it (unanswered,
   * still valid) or waits again, and what else was sealed for it and never
   * published is voided (reclaimSending); then each command of a running
   * rollout sent and unanswered, still valid, is re-published as sealed (the
   * predecessor may have stopped between recording it and publishing it; the
   * same jti and seq are applied at most once).
   */
  async #reconcile(lease: Lease): Promise<void> {
    const now = this.storage.now();
    for (const r of await this.storage.rollouts.list({ unfinished: true, limit: 10_000 })) {
      const { adopted, requeued } = await this.storage.rollouts.reclaimSending(r.id, lease);
      if (adopted + requeued > 0)
        this.#log.info('rollout.reclaimed', { rollout: r.id, adopted, requeued, reason: 'left claimed by the previous lease holder' });
      if (r.state !== 'running') continue;
      for (const { deviceId, jti } of await this.storage.rollouts.unansweredValid(r.id, now)) {
        const sealed = await this.storage.commands.sealed(jti);
        if (sealed === undefined) continue;
        if (!(await this.#publish(lease, deviceId, jti, sealed))) return;
      }
    }
  }

  async #republishExpired(lease: Lease): Promise<void> {
    if (this.#republish.size === 0) return;
    const devices = [...this.#republish];
    this.#republish.clear();
    const now = this.storage.now();
    for (const deviceId of devices) {
      for (const { jti } of await this.storage.rollouts.unansweredExpired(deviceId, now)) {
        const sealed = await this.storage.commands.sealed(jti);
        if (sealed === undefined) continue;
        if (!(await this.#publish(lease, deviceId, jti, sealed))) return;
        this.#log.info('rollout.republished', { device: deviceId, jti });
      }
    }
  }

  async #step(listed: RolloutRecord, lease: Lease): Promise<void> {
    // Read again: a pause or cancel may have landed since the tick listed the rollouts
    // (an HTTP request handled while an earlier rollout was sealing, or the CLI).
    const r = await this.storage.rollouts.get(listed.id);
    if (!r || r.finishedAt !== null) return;
    const now = this.storage.now();
    if (now >= r.deadlineAt) {
      const expired = await this.storage.rollouts.expireAll(r.id);
      this.#buckets.delete(r.id);
      await this.storage.rollouts.finish(
        r.id,
        r.state === 'running' || r.state === 'paused' ? 'completed' : r.state,
        `deadline passed (${expired} target(s) expired)`,
      );
      this.#log.info('rollout.deadline', { rollout: r.id, expired });
      return;
    }
    // Its targets are still being recorded (another request or process): not driven yet; finished
    // (cancelled, nothing sent) once its planning heartbeat is stale: the process recording it stopped.
    if (r.planning) {
      const reason = await this.storage.rollouts.finishInterruptedPlanning(r.id);
      if (reason) this.#log.warn('rollout.planning_interrupted', { rollout: r.id, reason });
      return;
    }
    for (const a of await this.storage.rollouts.answered(r.id)) {
      if (a.status === 'rejected' && a.code === 'E_EXPIRED') {
        // The board decided that command too late to apply it: a fresh one when it is back, after a
        // backoff, up to MAX_SEND_ATTEMPTS in all (a rollout that is aborted or cancelled sends
        // nothing more: that target is cancelled).
        const again = r.state === 'running' || r.state === 'paused';
        if (again && a.attempts >= MAX_SEND_ATTEMPTS) {
          await this.storage.rollouts.move(r.id, a.deviceId, ['sent'], 'failed', { code: E_EXPIRED_REPEATEDLY });
          this.#log.warn('rollout.target_failed', {
            rollout: r.id,
            device: a.deviceId,
            code: E_EXPIRED_REPEATEDLY,
            reason: `the board refused ${a.attempts} commands as expired: check its clock`,
          });
        } else if (again) {
          await this.storage.rollouts.move(r.id, a.deviceId, ['sent'], 'pending', { jti: null, code: 'E_EXPIRED', nextAt: now + resendBackoffMs(a.attempts) });
        } else {
          await this.storage.rollouts.move(r.id, a.deviceId, ['sent'], 'cancelled', { jti: null, code: `E_${r.state.toUpperCase()}` });
        }
      } else {
        await this.storage.rollouts.move(r.id, a.deviceId, ['sent'], a.status, { code: a.code });
      }
    }
    let counts = await this.storage.rollouts.counts(r.id);
    let state = r.state;
    const trip = state === 'running' ? abortTrips(r, counts) : undefined;
    if (trip) {
      const reason = `${trip.bad} of ${trip.results} results rejected, failed or rolled back (abort at ${r.abortPercent}% after ${r.abortMin})`;
      await this.storage.rollouts.setState(r.id, ['running'], 'aborted', reason, this.holder);
      this.#log.warn('rollout.aborted', { rollout: r.id, reason });
      state = 'aborted';
      counts = await this.storage.rollouts.counts(r.id);
    }
    if (state === 'running') {
      await this.#send(r, counts, now, lease);
      counts = await this.storage.rollouts.counts(r.id);
    }
    if (counts.pending + counts.sending + counts.sent === 0 && state !== 'paused') {
      this.#buckets.delete(r.id);
      await this.storage.rollouts.finish(r.id, state === 'running' ? 'completed' : state, 'every target answered or ended');
      this.#log.info('rollout.finished', { rollout: r.id, state: state === 'running' ? 'completed' : state, applied: counts.applied });
    }
  }

  async #send(r: RolloutRecord, counts: TargetCounts, now: number, lease: Lease): Promise<void> {
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
    const room = r.concurrency - (await this.storage.rollouts.inFlight(r.id, now));
    const batch = await this.storage.rollouts.deliverable(r.id, now, Math.min(allowance, room));
    // Each claim checks the lease (fencing): a target whose claim failed is never sealed nor published.
    const claimed: typeof batch = [];
    for (const t of batch) if (await this.storage.rollouts.claim(r.id, t.deviceId, lease)) claimed.push(t);
    if (bucket) bucket.tokens -= claimed.length;
    await Promise.all(claimed.map((t) => this.#deliver(r, t.deviceId, now, lease)));
  }

  async #deliver(r: RolloutRecord, deviceId: string, now: number, lease: Lease): Promise<void> {
    const ttlSeconds = Math.min(r.ttlSeconds, Math.floor((r.deadlineAt - now) / 1000));
    if (ttlSeconds < 1) {
      await this.storage.rollouts.move(r.id, deviceId, ['sending'], 'expired', { code: 'E_DEADLINE', lease });
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
    } catch (err) {
      const code = isCodedError(err) ? err.code : 'E_INTERNAL';
      await this.storage.rollouts.move(r.id, deviceId, ['sending'], 'not sent', { code, lease });
      this.#log.warn('rollout.not_sent', { rollout: r.id, device: deviceId, code, reason: err instanceof Error ? err.message : String(err) });
      return;
    }
    // Marked sent under the lease before it is published (a failed publish is re-published when the
    // board next connects); an engine that lost the lease meanwhile voids the command instead.
    const marked = await this.storage.rollouts.markSent(r.id, deviceId, sealed.jti, lease);
    if (marked !== 'sent') {
      const stopped = marked === 'stopped';
      this.#log[stopped ? 'info' : 'warn'](stopped ? 'rollout.not_published' : 'rollout.fenced', {
        rollout: r.id,
        device: deviceId,
        jti: sealed.jti,
        reason: stopped
          ? 'the rollout was paused, cancelled or aborted while the command was sealed: voided, not published'
          : 'lease lost before the command was marked sent: voided, not published',
      });
      return;
    }
    await this.#publish(lease, deviceId, sealed.jti, sealed.token, r.id);
  }
}
