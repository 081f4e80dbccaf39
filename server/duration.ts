/** Durations on the command line: `30s`, `15m`, `24h`, `7d`, `500ms`, or a bare number of seconds. */
import { CliError } from './cli-support.js';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Milliseconds of a duration such as `24h`; throws E_USAGE (exit 2) when it is not one. */
export function parseDuration(text: string | number, what = 'duration'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(String(text));
  if (!m) throw new CliError('E_USAGE', `${what} "${text}" is not a duration like 30s, 15m, 24h or 7d`, 2);
  const ms = Math.round(Number(m[1]) * (UNITS[m[2] ?? 's'] ?? 1000));
  if (!Number.isSafeInteger(ms) || ms <= 0) throw new CliError('E_USAGE', `${what} "${text}" must be positive`, 2);
  return ms;
}
