/**
 * The filters of `provision-server audit` and `GET /audit`, checked the same
 * way for both: a device id, a rollout id (a UUID), an event name or dotted
 * prefix, `--since`/`--until` as a duration ago (`1h`, `7d`) or an ISO time,
 * and a limit. A bad one is refused with `code` (E_USAGE for the CLI,
 * E_BAD_REQUEST for the API) and a message naming it as the caller wrote it.
 */
import { CodedError, DURATION_SYNTAX, isValidId, parseDurationMs } from '../protocol/index.js';
import { MAX_AUDIT_LIMIT, type AuditFilter, type AuditRecord } from './storage/records.js';
import { printable } from './terminal-text.js';

export const ROLLOUT_ID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const EVENT_PATTERN = /^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$/;

export interface AuditFilterInput {
  device?: string | undefined;
  rollout?: string | undefined;
  action?: string | undefined;
  since?: string | undefined;
  until?: string | undefined;
  limit?: string | number | undefined;
}

/** How each filter is named where it was given: `--since` on the command line, `since` in a query string. */
export type FilterNames = Record<keyof AuditFilterInput, string>;

export const CLI_FILTER_NAMES: FilterNames = {
  device: '--device',
  rollout: '--rollout',
  action: '--action',
  since: '--since',
  until: '--until',
  limit: '--limit',
};

/** A point in time: a duration ago (`1h`: an hour before `now`) or an ISO 8601 time. */
export function parseTimePoint(text: string, now: number, name: string, code: string): number {
  if (!/^\s*-/.test(text)) {
    const d = parseDurationMs(text);
    if ('ms' in d) return now - d.ms;
  }
  if (/^\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(text.trim())) {
    const t = Date.parse(text.trim());
    if (Number.isFinite(t)) return t;
  }
  throw new CodedError(code, `${name} "${printable(text)}" is neither a duration ago (${DURATION_SYNTAX}) nor an ISO time such as 2026-12-04T10:00:00Z`);
}

export function parseAuditFilter(input: AuditFilterInput, names: FilterNames, code: string, now: number): AuditFilter {
  const bad = (name: keyof AuditFilterInput, value: string, why: string): CodedError => new CodedError(code, `${names[name]} "${printable(value)}" ${why}`);
  const f: AuditFilter = {};
  if (input.device !== undefined) {
    if (!isValidId(input.device)) throw bad('device', input.device, 'is not a device id: 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit');
    f.deviceId = input.device;
  }
  if (input.rollout !== undefined) {
    if (!ROLLOUT_ID_PATTERN.test(input.rollout)) throw bad('rollout', input.rollout, 'is not a rollout id (a UUID, as rollout list prints)');
    f.rolloutId = input.rollout.toLowerCase();
  }
  if (input.action !== undefined) {
    if (input.action.length > 64 || !EVENT_PATTERN.test(input.action))
      throw bad('action', input.action, 'is not an audit event name or prefix, e.g. command.ack, rollout, device.enroll');
    f.event = input.action;
  }
  if (input.since !== undefined) f.since = parseTimePoint(input.since, now, names.since, code);
  if (input.until !== undefined) f.until = parseTimePoint(input.until, now, names.until, code);
  if (f.since !== undefined && f.until !== undefined && f.since > f.until) {
    throw new CodedError(code, `${names.since} is after ${names.until}: nothing can match`);
  }
  if (input.limit !== undefined) {
    const n = typeof input.limit === 'number' ? input.limit : /^\d+$/.test(input.limit) ? Number(input.limit) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < 1 || n > MAX_AUDIT_LIMIT) throw bad('limit', String(input.limit), `must be a whole number of 1-${MAX_AUDIT_LIMIT}`);
    f.limit = n;
  }
  return f;
}

/** One audit row as JSON (the API, --json). */
/** One audit row as JSON; `by`: who did it (an operator's name, `http-token`, `cli:USER`), null when the row does not say. */
export function auditView(a: AuditRecord): Record<string, unknown> {
  const by = typeof a.detail.by === 'string' ? a.detail.by : null;
  return { id: a.id, at: new Date(a.at).toISOString(), event: a.event, device_id: a.deviceId, by, detail: a.detail };
}

/** One audit row as a line of text: `TIME EVENT [device=ID] key=value ...` (control characters escaped). */
export function auditLine(a: AuditRecord): string {
  const fields = Object.entries(a.detail).map(([k, v]) => `${k}=${typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v)}`);
  return printable([new Date(a.at).toISOString(), a.event, ...(a.deviceId !== null ? [`device=${a.deviceId}`] : []), ...fields].join(' '));
}
