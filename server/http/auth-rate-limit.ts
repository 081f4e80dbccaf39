/**
 * The login rate limit: after MAX_PER_NAME failed logins for one name, or
 * MAX_PER_ADDRESS from one client address, within WINDOW_MS, further logins
 * for it are refused (429 E_RATE_LIMITED, Retry-After: when the oldest failure
 * in the window leaves it) without checking the password. A success clears the
 * name's failures (not the address's). In memory, per serve process; at most
 * MAX_KEYS names and addresses are tracked (the oldest are forgotten first).
 */
import { CodedError } from '../../protocol/index.js';

export const WINDOW_MS = 15 * 60_000;
export const MAX_PER_NAME = 5;
export const MAX_PER_ADDRESS = 20;
const MAX_KEYS = 10_000;

export class RateLimitedError extends CodedError {
  readonly retryAfterS: number;
  constructor(retryAfterS: number, what: string) {
    super('E_RATE_LIMITED', `too many failed logins for ${what}: try again in ${retryAfterS} s`);
    this.retryAfterS = retryAfterS;
  }
}

export class LoginLimiter {
  readonly #now: () => number;
  /** Failure times (oldest first) by key: `n:NAME` or `a:ADDRESS`. */
  readonly #failures = new Map<string, number[]>();

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** E_RATE_LIMITED (RateLimitedError) when the name or the address has used up its failures. */
  check(name: string, address: string): void {
    const now = this.#now();
    for (const [key, max, what] of [
      [`n:${name}`, MAX_PER_NAME, 'this name'],
      [`a:${address}`, MAX_PER_ADDRESS, 'this address'],
    ] as const) {
      const times = this.#live(key, now);
      if (times.length >= max) {
        const oldest = times[times.length - max] as number;
        throw new RateLimitedError(Math.max(1, Math.ceil((oldest + WINDOW_MS - now) / 1000)), what);
      }
    }
  }

  failed(name: string, address: string): void {
    const now = this.#now();
    for (const key of [`n:${name}`, `a:${address}`]) {
      const times = this.#live(key, now);
      times.push(now);
      this.#failures.delete(key); // re-inserted last: the map's order is least recently failed first
      this.#failures.set(key, times);
    }
    while (this.#failures.size > MAX_KEYS) {
      const first = this.#failures.keys().next().value as string;
      this.#failures.delete(first);
    }
  }

  succeeded(name: string): void {
    this.#failures.delete(`n:${name}`);
  }

  #live(key: string, now: number): number[] {
    const times = (this.#failures.get(key) ?? []).filter((t) => t > now - WINDOW_MS);
    if (times.length === 0) this.#failures.delete(key);
    else this.#failures.set(key, times);
    return times;
  }
}
