/**
 * Claim checks shared by the three message kinds: types of required claims and
 * the time window, with a way to say the receiver's clock is not trustworthy.
 */
import { ProtocolError } from './errors.js';
import { isRecord } from './guards.js';
import { DEFAULT_MAX_SKEW_SECONDS, MAX_TTL_SECONDS } from './limits.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * How far to trust the local clock. A Raspberry Pi has no RTC: until NTP has
 * synchronised, `trusted` is false and only `seq` protects against replay.
 */
export interface ClockPolicy {
  trusted: boolean;
  /** Milliseconds since the epoch; defaults to Date.now. */
  now?: () => number;
  maxSkewSeconds?: number;
}

export const TRUSTED_CLOCK: ClockPolicy = { trusted: true };
export const UNTRUSTED_CLOCK: ClockPolicy = { trusted: false };

export function nowSeconds(clock?: ClockPolicy): number {
  return Math.floor((clock?.now ?? Date.now)() / 1000);
}

/** Reads claims of an authenticated payload with type checks that throw E_CLAIMS. */
export class ClaimReader {
  readonly #claims: Record<string, unknown>;

  constructor(payload: unknown) {
    if (!isRecord(payload)) throw new ProtocolError('E_CLAIMS', 'claims must be a JSON object');
    this.#claims = payload;
  }

  get raw(): Record<string, unknown> {
    return this.#claims;
  }

  string(name: string, max = 256): string {
    const v = this.#claims[name];
    if (typeof v !== 'string' || v.length === 0 || v.length > max) {
      throw new ProtocolError('E_CLAIMS', `claim "${name}" must be a non-empty string of at most ${max} characters`);
    }
    return v;
  }

  optionalString(name: string, max = 1024): string | undefined {
    const v = this.#claims[name];
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v.length > max) throw new ProtocolError('E_CLAIMS', `claim "${name}" must be a string of at most ${max} characters`);
    return v;
  }

  /** A NumericDate or counter: a non-negative safe integer. */
  integer(name: string, min = 0): number {
    const v = this.#claims[name];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
      throw new ProtocolError('E_CLAIMS', `claim "${name}" must be an integer >= ${min}`);
    }
    return v;
  }

  optionalInteger(name: string, min = 0): number | undefined {
    return this.#claims[name] === undefined ? undefined : this.integer(name, min);
  }

  uuid(name: string): string {
    const v = this.#claims[name];
    if (typeof v !== 'string' || !UUID.test(v)) throw new ProtocolError('E_CLAIMS', `claim "${name}" must be a UUID`);
    return v;
  }

  object(name: string): Record<string, unknown> {
    const v = this.#claims[name];
    if (!isRecord(v)) throw new ProtocolError('E_CLAIMS', `claim "${name}" must be a JSON object`);
    return v;
  }

  optionalObject(name: string): Record<string, unknown> | undefined {
    return this.#claims[name] === undefined ? undefined : this.object(name);
  }
}

/** Checks `iat` (and `exp` when present) against the clock, only when the clock is trusted. */
export function checkTimes(iat: number, exp: number | undefined, clock: ClockPolicy): void {
  if (exp !== undefined) {
    if (exp < iat) throw new ProtocolError('E_CLAIMS', 'claim "exp" is before "iat"');
    if (exp - iat > MAX_TTL_SECONDS) throw new ProtocolError('E_CLAIMS', `lifetime exp - iat exceeds ${MAX_TTL_SECONDS} s`);
  }
  if (!clock.trusted) return;
  const now = nowSeconds(clock);
  const skew = clock.maxSkewSeconds ?? DEFAULT_MAX_SKEW_SECONDS;
  if (exp !== undefined && exp + skew < now) throw new ProtocolError('E_EXPIRED', `expired ${now - exp} s ago`);
  if (iat - skew > now) throw new ProtocolError('E_NOT_YET_VALID', `issued ${iat - now} s in the future (clock skew allowance ${skew} s)`);
}
