/**
 * What `serve` does with reports besides opening and recording them
 * (server/core/inbound.ts): the per-device rate limit (server/core/report-rate-limit.ts),
 * checked before a report is opened; reports that arrive before the server
 * knows the device's keys (a board's `connect` report races its own
 * enrollment, which arrives on another session), held briefly and retried
 * once; and counts of the reports dropped, logged as one line per interval
 * (`report.drops`), never one per report: a report not newer than the one
 * recorded (a replay, a late will), one over the rate, one still without keys.
 */
import type { Logger } from '../../lib/log.js';
import { ReportRateLimit, type ReportRateOptions } from './report-rate-limit.js';

export interface ReportIntakeOptions {
  rate?: ReportRateOptions;
  /** How long a report without a registered key is held before its one retry (default 3 s). */
  holdMs?: number;
  /** Devices whose early report is held at once (default 1,000; beyond, dropped at once). */
  maxHeld?: number;
  /** The interval of the `report.drops` summary (default 60 s). */
  summaryMs?: number;
}

export interface ReportDropCounts {
  /** Not newer than the newest report recorded for the device (a replay, a late will, a redelivery). */
  stale: number;
  /** Over the device's rate, dropped unopened. */
  rateLimited: number;
  /** Held because the device had no registered signing key yet. */
  held: number;
  /** Dropped because the device still had no registered signing key after being held. */
  noKey: number;
}

interface Held {
  retry: () => Promise<void>;
  timer: NodeJS.Timeout;
}

export class ReportIntake {
  /** Totals since the start. */
  readonly counts: ReportDropCounts = { stale: 0, rateLimited: 0, held: 0, noKey: 0 };
  readonly #rate: ReportRateLimit;
  readonly #log: Logger;
  readonly #holdMs: number;
  readonly #maxHeld: number;
  readonly #summaryMs: number;
  readonly #held = new Map<string, Held>();
  /** Counts since the last summary, and the devices over their rate in that interval (a few named). */
  #window: ReportDropCounts = { stale: 0, rateLimited: 0, held: 0, noKey: 0 };
  #limitedDevices = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(log: Logger, options: ReportIntakeOptions = {}) {
    this.#log = log;
    this.#rate = new ReportRateLimit(options.rate);
    this.#holdMs = options.holdMs ?? 3000;
    this.#maxHeld = options.maxHeld ?? 1000;
    this.#summaryMs = options.summaryMs ?? 60_000;
  }

  /** Whether a report of `deviceId` may be opened now; a refusal is counted (and summarised later). */
  admit(deviceId: string): boolean {
    if (this.#rate.take(deviceId)) return true;
    this.#count('rateLimited');
    if (this.#limitedDevices.size < 20) this.#limitedDevices.add(deviceId);
    return false;
  }

  /** Counts a report that was not newer than the recorded one. */
  stale(): void {
    this.#count('stale');
  }

  /**
   * Holds a report of a device without a registered signing key: `retry` runs
   * once, when the device's enrollment is recorded here (`enrolled`) or after
   * the hold time. The newest report of a device replaces one held. False when
   * nothing more can be held (the caller drops it).
   */
  hold(deviceId: string, retry: () => Promise<void>): boolean {
    if (this.#closed) return false;
    const before = this.#held.get(deviceId);
    if (before === undefined && this.#held.size >= this.#maxHeld) return false;
    if (before !== undefined) clearTimeout(before.timer);
    const timer = setTimeout(() => this.#release(deviceId), this.#holdMs);
    timer.unref();
    this.#held.set(deviceId, { retry, timer });
    this.#count('held');
    return true;
  }

  /** The device's enrollment was recorded: its held report, if any, is retried now. */
  enrolled(deviceId: string): void {
    this.#release(deviceId);
  }

  /** Counts a report dropped for want of a registered key after its hold. */
  noKey(): void {
    this.#count('noKey');
  }

  /** Stops the timers; held reports are dropped (a board reports again at its next connect or interval). */
  close(): void {
    this.#closed = true;
    for (const h of this.#held.values()) clearTimeout(h.timer);
    this.#held.clear();
    this.#summary();
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #release(deviceId: string): void {
    const h = this.#held.get(deviceId);
    if (h === undefined) return;
    this.#held.delete(deviceId);
    clearTimeout(h.timer);
    if (!this.#closed) void h.retry().catch(() => undefined);
  }

  #count(what: keyof ReportDropCounts): void {
    this.counts[what] += 1;
    this.#window[what] += 1;
    if (this.#timer || this.#closed) return;
    this.#timer = setInterval(() => this.#summary(), this.#summaryMs);
    this.#timer.unref();
  }

  #summary(): void {
    const w = this.#window;
    const limited = [...this.#limitedDevices];
    this.#window = { stale: 0, rateLimited: 0, held: 0, noKey: 0 };
    this.#limitedDevices = new Set();
    if (w.stale + w.rateLimited + w.held + w.noKey === 0) {
      if (this.#timer) clearInterval(this.#timer);
      this.#timer = undefined;
      return;
    }
    const fields = { stale: w.stale, rate_limited: w.rateLimited, held: w.held, no_key: w.noKey, interval_s: Math.round(this.#summaryMs / 1000) };
    // Over the rate is a board misbehaving (or attacked): a warning, naming a few. The rest is routine.
    if (w.rateLimited > 0) this.#log.warn('report.drops', { ...fields, rate_limited_devices: limited.join(',') });
    else this.#log.info('report.drops', fields);
  }
}
