/**
 * How far a rollout is and what it waits for: the progress lines a `send`
 * prints while it follows a rollout (counts by state, rate, ETA), and the
 * outlook `rollout show` prints (pending targets held by the rate or the
 * concurrency limit, those whose board is offline, those in a re-send backoff
 * after E_EXPIRED, the next send, an ETA), counted by the storage.
 */
import type { RolloutRecord, TargetCounts } from '../storage/records.js';
import type { Storage } from '../storage/types.js';
import { currentRate } from './engine.js';
import { progressOf } from './rollout-views.js';

const iso = (t: number): string => new Date(t).toISOString();

/** `4s`, `3m 20s`, `2h 5m`, `3d 4h`. */
export function durationText(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60 ? ` ${s % 60}s` : ''}`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60) ? ` ${Math.floor((s % 3600) / 60)}m` : ''}`;
  return `${Math.floor(s / 86_400)}d${Math.floor((s % 86_400) / 3600) ? ` ${Math.floor((s % 86_400) / 3600)}h` : ''}`;
}

/**
 * One progress line: `rollout ID: 12/20 done (10 applied, 1 rejected, 0 failed,
 * 1 expired, 0 not sent), 3 in flight, 5 waiting; 2.4/s; ETA 3s`. `rate` is in
 * targets done per second (undefined: not known yet).
 */
export function progressLine(id: string, counts: TargetCounts, rate: number | undefined): string {
  const { done, total } = progressOf(counts);
  const open = counts.pending + counts.sending + counts.sent;
  const rateText = rate === undefined ? 'rate unknown yet' : `${rate < 10 ? rate.toFixed(1) : Math.round(rate)}/s`;
  const eta = open === 0 ? 'ETA now' : rate ? `ETA ${durationText((open / rate) * 1000)}` : 'ETA unknown';
  return (
    `rollout ${id}: ${done}/${total} done (${counts.applied} applied, ${counts.rejected} rejected, ${counts.failed} failed, ${counts.rolled_back ? `${counts.rolled_back} rolled back, ` : ''}` +
    `${counts.expired} expired, ${counts['not sent'] + counts.cancelled} not sent), ${counts.sending + counts.sent} in flight, ` +
    `${counts.pending} waiting; ${rateText}; ${eta}`
  );
}

/**
 * Progress lines at most every `intervalMs` (the first one an interval after
 * the start), the rate measured from the targets done since the start.
 */
export class ProgressLines {
  readonly #id: string;
  readonly #intervalMs: number;
  readonly #write: (line: string) => void;
  readonly #now: () => number;
  #start: { at: number; done: number } | undefined;
  #last = 0;

  constructor(id: string, intervalMs: number, write: (line: string) => void, now: () => number = Date.now) {
    this.#id = id;
    this.#intervalMs = intervalMs;
    this.#write = write;
    this.#now = now;
  }

  update(counts: TargetCounts): void {
    const t = this.#now();
    const { done } = progressOf(counts);
    if (!this.#start) {
      this.#start = { at: t, done };
      this.#last = t;
      return;
    }
    if (t - this.#last < this.#intervalMs) return;
    this.#last = t;
    const elapsed = (t - this.#start.at) / 1000;
    const rate = elapsed > 0 && done > this.#start.done ? (done - this.#start.done) / elapsed : undefined;
    this.#write(progressLine(this.#id, counts, rate));
  }
}

export interface RolloutOutlook {
  /** Pending targets whose board is online (or never reported): held only by the rate or the concurrency limit. */
  readyOnline: number;
  /** Pending targets whose board is offline by its reports (and not in a backoff): sent when it reports in, until the deadline. */
  waitingOffline: number;
  /** Pending targets in the re-send backoff after their board refused a command as expired (E_EXPIRED). */
  waitingBackoff: number;
  inFlight: number;
  /** When the engine may send next (undefined: not while the rollout is not running, or nothing online waits). */
  nextSendAt: number | undefined;
  nextSendNote: string;
  /** When the targets online should be done by (undefined: unknown). */
  etaAt: number | undefined;
  etaNote: string;
}

/** What a rollout waits for now (`rollout show`). */
export async function rolloutOutlook(storage: Storage, r: RolloutRecord, counts: TargetCounts, now: number): Promise<RolloutOutlook> {
  // Counted by the storage, as the engine's `deliverable` tells them apart (no rows loaded).
  const pending = await storage.rollouts.pendingBreakdown(r.id, now);
  const readyOnline = pending.deliverable;
  const waitingOffline = pending.offline;
  const waitingBackoff = pending.backoff;
  const inFlight = await storage.rollouts.inFlight(r.id, now);
  const base = { readyOnline, waitingOffline, waitingBackoff, inFlight };
  const offlineNote =
    (waitingOffline > 0 ? `; ${waitingOffline} offline: sent when they report in, until ${iso(r.deadlineAt)}` : '') +
    (waitingBackoff > 0 && pending.backoffUntil !== null
      ? `; ${waitingBackoff} in a backoff after E_EXPIRED (the first from ${iso(pending.backoffUntil)})`
      : '');
  if (r.finishedAt !== null) return { ...base, nextSendAt: undefined, nextSendNote: 'finished', etaAt: undefined, etaNote: 'finished' };
  if (r.state !== 'running') {
    const note = `${r.state}: nothing is sent${r.state === 'paused' ? ' until rollout resume' : ''}`;
    return { ...base, nextSendAt: undefined, nextSendNote: note, etaAt: undefined, etaNote: note };
  }
  if (readyOnline === 0 && waitingBackoff > 0 && pending.backoffUntil !== null) {
    const note = `after the backoff of ${waitingBackoff} target(s) refused E_EXPIRED`;
    return { ...base, nextSendAt: pending.backoffUntil, nextSendNote: note, etaAt: undefined, etaNote: `unknown: ${note}${offlineNote}` };
  }
  if (readyOnline === 0) {
    const note = waitingOffline > 0 ? `waiting for boards offline to report in (until ${iso(r.deadlineAt)})` : 'nothing left to send';
    return { ...base, nextSendAt: undefined, nextSendNote: note, etaAt: undefined, etaNote: counts.sent + counts.sending > 0 ? 'waiting for answers' : note };
  }
  const rate = currentRate(r, counts.applied);
  const lastSent = await storage.rollouts.lastSentAt(r.id);
  let nextSendAt = now;
  let nextSendNote = 'now';
  if (inFlight >= r.concurrency) {
    nextSendNote = `when one of the ${inFlight} commands in flight is answered or expires (concurrency ${r.concurrency})`;
  } else if (rate !== undefined && lastSent !== null) {
    nextSendAt = Math.max(now, lastSent + 60_000 / rate);
    nextSendNote = `at ${rate}/min`;
  }
  const etaAt = rate === undefined ? undefined : Math.max(now, nextSendAt) + ((readyOnline - 1) * 60_000) / rate;
  const etaNote =
    etaAt === undefined
      ? `no rate limit: as fast as ${r.concurrency} in flight are answered${offlineNote}`
      : `the ${readyOnline} online sent by ${iso(etaAt)} (in ${durationText(etaAt - now)}) at ${rate}/min${offlineNote}`;
  return { ...base, nextSendAt: inFlight >= r.concurrency ? undefined : nextSendAt, nextSendNote, etaAt, etaNote };
}

export function outlookView(o: RolloutOutlook): Record<string, unknown> {
  return {
    waiting_online: o.readyOnline,
    waiting_offline: o.waitingOffline,
    waiting_backoff: o.waitingBackoff,
    in_flight: o.inFlight,
    next_send_at: o.nextSendAt === undefined ? null : iso(o.nextSendAt),
    next_send: o.nextSendNote,
    eta_at: o.etaAt === undefined ? null : iso(o.etaAt),
    eta: o.etaNote,
  };
}
