/**
 * Refused enrollments, bounded. Anyone holding the public trust.jwks and the
 * right to publish on one enroll topic can make enrollments that open (they
 * are self-signed) and are then refused by the registry (unknown token): one
 * audit row (a synced write to an append-only table) and one log line each
 * would let a flood grow the audit log without bound and slow the server's
 * inbound path. So per (topic device id, code) and window, the first refusal
 * is audited and logged at once, the rest are counted and written as one
 * summary row (`count`, window) when the window closes or the server stops.
 * At most `maxKeys` (device, code) pairs are tracked per window; refusals
 * beyond that are summed per code in one row without a device id.
 */
import type { Logger } from '../../lib/log.js';
import { logStorageError } from '../storage-error.js';
import type { Storage } from '../storage/types.js';

export const ENROLL_REFUSED_EVENT = 'device.enroll.refused';

export interface EnrollRefusalOptions {
  /** Length of an aggregation window, ms (default 60 s). */
  windowMs?: number;
  /** Distinct (device, code) pairs tracked per window (default 1000). */
  maxKeys?: number;
}

interface Bucket {
  deviceId: string | null;
  code: string;
  since: number;
  /** Refusals after the first (already written) one. */
  more: number;
  /** Whether the registry refused it (audited) or it did not even open (logged only). */
  audited: boolean;
  lastReason: string;
}

export class EnrollRefusals {
  readonly #storage: Storage;
  readonly #log: Logger;
  readonly #windowMs: number;
  readonly #maxKeys: number;
  readonly #buckets = new Map<string, Bucket>();
  readonly #overflow = new Map<string, Bucket>();
  #timer: NodeJS.Timeout | undefined;

  constructor(storage: Storage, log: Logger, options: EnrollRefusalOptions = {}) {
    this.#storage = storage;
    this.#log = log;
    this.#windowMs = options.windowMs ?? 60_000;
    this.#maxKeys = options.maxKeys ?? 1000;
  }

  /**
   * One refused enrollment on `deviceId`'s topic. `audited`: the enrollment
   * opened and the registry refused it (token); otherwise it did not open
   * (garbage, bad signature) and is only logged, never stored. Resolves once
   * the audit row is written; a storage error is logged, never thrown.
   */
  async refused(deviceId: string, code: string, reason: string, audited: boolean): Promise<void> {
    const now = this.#storage.now();
    const key = `${deviceId}\u0000${code}`;
    const bucket = this.#buckets.get(key);
    if (bucket) {
      bucket.more++;
      bucket.lastReason = reason;
      return;
    }
    if (this.#buckets.size >= this.#maxKeys) {
      const over = this.#overflow.get(code) ?? { deviceId: null, code, since: now, more: 0, audited, lastReason: reason };
      over.more++;
      over.audited ||= audited;
      over.lastReason = reason;
      this.#overflow.set(code, over);
      this.#arm();
      return;
    }
    this.#buckets.set(key, { deviceId, code, since: now, more: 0, audited, lastReason: reason });
    this.#log.warn('enroll.dropped', { device: deviceId, code, reason });
    this.#arm();
    if (audited) await this.#append(deviceId, { code, reason, count: 1 });
  }

  /** Writes the summaries of windows that have closed (all of them with `all`); storage errors are logged. */
  async flush(all = false): Promise<void> {
    const now = this.#storage.now();
    const due: Bucket[] = [];
    for (const [key, b] of this.#buckets) {
      if (!all && now - b.since < this.#windowMs) continue;
      this.#buckets.delete(key);
      due.push(b);
    }
    for (const [code, b] of this.#overflow) {
      if (!all && now - b.since < this.#windowMs) continue;
      this.#overflow.delete(code);
      due.push(b);
    }
    if (this.#buckets.size === 0 && this.#overflow.size === 0 && this.#timer) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
    // Each summary's write starts now (SQLite: written before flush returns), all awaited together.
    await Promise.all(due.map((b) => this.#summary(b, now)));
  }

  /** Stops the timer and flushes everything (server shutdown: before the storage closes). */
  async close(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.flush(true);
  }

  async #append(deviceId: string | null, detail: Record<string, unknown>): Promise<void> {
    if (!this.#storage.open) return;
    try {
      await this.#storage.audit.append(ENROLL_REFUSED_EVENT, deviceId, detail);
    } catch (err) {
      logStorageError(this.#log, err, { event: ENROLL_REFUSED_EVENT });
    }
  }

  async #summary(b: Bucket, now: number): Promise<void> {
    if (b.more === 0) return;
    const detail = {
      code: b.code,
      count: b.more,
      window_start: new Date(b.since).toISOString(),
      window_end: new Date(now).toISOString(),
      last_reason: b.lastReason,
    };
    this.#log.warn('enroll.dropped.summary', { device: b.deviceId ?? '*', ...detail });
    if (b.audited) await this.#append(b.deviceId, { ...detail, aggregated: true });
  }

  #arm(): void {
    if (this.#timer) return;
    this.#timer = setInterval(
      () => {
        this.flush().catch((err: unknown) => {
          this.#log.error('enroll.refusals.flush_failed', { reason: err instanceof Error ? err.message : String(err) });
        });
      },
      Math.max(1000, Math.floor(this.#windowMs / 4)),
    );
    this.#timer.unref();
  }
}
