/**
 * The replay interface: the receiver owns the durable `seq` and recent `jti`
 * state and checks a message through it after the signature and claims hold.
 */
import { ProtocolError } from './errors.js';

export interface ReplayGuard {
  /** Throws ProtocolError E_REPLAY when `seq` is not fresh or `jti` was seen. */
  check(seq: number, jti: string): void | Promise<void>;
}

export interface ReplayState {
  lastSeq: number;
  recentJtis: ReadonlySet<string> | readonly string[];
}

/** The standard rule: `seq` strictly greater than the last applied, `jti` not in the recent set. */
export function checkReplay(state: ReplayState, seq: number, jti: string): void {
  if (seq <= state.lastSeq) throw new ProtocolError('E_REPLAY', `seq ${seq} is not greater than the last applied seq ${state.lastSeq}`);
  const seen = state.recentJtis instanceof Set ? state.recentJtis.has(jti) : (state.recentJtis as readonly string[]).includes(jti);
  if (seen) throw new ProtocolError('E_REPLAY', `jti ${jti} was already seen`);
}
