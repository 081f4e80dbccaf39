/**
 * The one duration syntax of both CLIs: `500ms`, `30s`, `15m`, `24h`, `7d`, or a
 * plain number of seconds. Pure parsing (each CLI turns a refusal into its usage error).
 */
const UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

export const DURATION_SYNTAX = 'a duration like 90 (seconds), 30s, 15m, 24h or 7d';

/** Milliseconds of `text`, or a reason why it is not a positive duration. */
export function parseDurationMs(text: string | number): { ms: number } | { problem: string } {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(String(text));
  if (!m) return { problem: `is not ${DURATION_SYNTAX}` };
  const ms = Math.round(Number(m[1]) * (UNITS[m[2] ?? 's'] ?? 1000));
  if (!Number.isSafeInteger(ms) || ms <= 0) return { problem: 'must be positive' };
  return { ms };
}
