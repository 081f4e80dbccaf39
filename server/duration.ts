/** Durations on the command line (syntax: protocol/duration.ts): `30s`, `15m`, `24h`, `7d`, `500ms`, or plain seconds. */
import { CodedError, DURATION_SYNTAX, MAX_TTL_SECONDS, parseDurationMs } from '../protocol/index.js';

/** Milliseconds of a duration such as `24h`; throws E_USAGE (exit 2) when it is not one. */
export function parseDuration(text: string | number, what = 'duration'): number {
  // `-1h` is refused as not positive (the words a reader expects), not as an unknown syntax.
  const r = /^\s*-/.test(String(text)) ? { problem: `must be positive (${DURATION_SYNTAX})` } : parseDurationMs(text);
  if ('problem' in r) throw new CodedError('E_USAGE', `${what} "${text}" ${r.problem}`);
  return r.ms;
}

/** Whole seconds of a duration (rounded up), e.g. a command's lifetime. */
export function parseDurationSeconds(text: string | number, what = 'duration'): number {
  return Math.ceil(parseDuration(text, what) / 1000);
}

/** A command's lifetime in seconds: a duration of at most 7 days (a sealed command is no standing credential). */
export function parseCommandTtl(text: string | number, what = '--ttl'): number {
  const seconds = parseDurationSeconds(text, what);
  if (seconds > MAX_TTL_SECONDS) throw new CodedError('E_USAGE', `${what} "${text}" is longer than a command may live (at most 7d)`);
  return seconds;
}
