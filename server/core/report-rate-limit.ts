/**
 * A token bucket per device for `serve`'s reports, checked before a report is
 * opened (decrypting and verifying it is the expensive part): a device gets
 * `burst` reports at once and `perSecond` after that; excess reports are
 * dropped unopened. A report is only presence (the next one says the same),
 * so losing one is harmless, while a board flooding valid signed reports must
 * not take the server's time from the others. An agent sends one per connect,
 * one per interval (10 s at the least) and one after each applied command.
 *
 * At most `maxDevices` buckets are kept: beyond that, full buckets (devices
 * quiet long enough to be back at `burst`) are forgotten, which changes
 * nothing; if too few are, the oldest tenth of the buckets is (one sweep per
 * tenth of `maxDevices` new devices, not one per report).
 */

export interface ReportRateOptions {
  /** Reports a device may send at once (default 20). */
  burst?: number;
  /** Sustained reports per second per device (default 0.2: 12 a minute). */
  perSecond?: number;
  /** Buckets kept (default 100,000). */
  maxDevices?: number;
  now?: () => number;
}

interface Bucket {
  tokens: number;
  at: number;
}

export class ReportRateLimit {
  readonly burst: number;
  readonly perSecond: number;
  readonly #maxDevices: number;
  readonly #now: () => number;
  readonly #buckets = new Map<string, Bucket>();

  constructor(options: ReportRateOptions = {}) {
    this.burst = options.burst ?? 20;
    this.perSecond = options.perSecond ?? 0.2;
    this.#maxDevices = options.maxDevices ?? 100_000;
    this.#now = options.now ?? Date.now;
    if (!(this.burst >= 1) || !(this.perSecond > 0)) throw new RangeError('a report rate limit needs burst >= 1 and perSecond > 0');
  }

  /** Takes a token for one report of `deviceId`: false when its bucket is empty (drop the report unopened). */
  take(deviceId: string): boolean {
    const now = this.#now();
    let b = this.#buckets.get(deviceId);
    if (b === undefined) {
      if (this.#buckets.size >= this.#maxDevices) this.#evict(now);
      b = { tokens: this.burst, at: now };
      this.#buckets.set(deviceId, b);
    } else {
      b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.perSecond);
      b.at = now;
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  #evict(now: number): void {
    for (const [id, b] of this.#buckets) {
      if (b.tokens + ((now - b.at) / 1000) * this.perSecond >= this.burst) this.#buckets.delete(id);
    }
    if (this.#buckets.size < this.#maxDevices * 0.9) return;
    let excess = this.#buckets.size - Math.floor(this.#maxDevices * 0.9);
    for (const id of this.#buckets.keys()) {
      if (excess-- <= 0) break;
      this.#buckets.delete(id);
    }
  }
}
