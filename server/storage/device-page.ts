/**
 * The fleet page's query (DeviceStore.page, GET /devices), one text for both
 * backends: the filters, the sort and the count are SQL over `devices d`, so
 * the database reads one page (indexes of SQLite migration 12 / PostgreSQL
 * migration 5), never the fleet into memory. Each backend gives its dialect:
 * how a value becomes a placeholder, and how the JSON `reported` column is read.
 */
import { PRESENCE_GRACE } from '../core/presence.js';
import { assertTag } from './rules.js';
import type { DevicePageQuery } from './types.js';

export interface PageDialect {
  /** Adds a parameter and returns its placeholder (`?` or `$N`). */
  p(value: unknown): string;
  /** The running agent version as DeviceRecord.agentVersion reads it (the expression of the version index). */
  readonly version: string;
  /** Position of a substring (1-based, 0: absent): `instr(h, n)` or `strpos(h, n)`. */
  readonly position: (haystack: string, needle: string) => string;
}

/** Online now by its reports, as presenceOf (server/core/presence.ts) judges it. */
export function onlineSql(d: PageDialect, now: number): string {
  return `(d.presence = 'online' AND d.last_seen_at IS NOT NULL AND d.last_seen_at + COALESCE(d.report_interval_s, 0) * ${d.p(PRESENCE_GRACE * 1000)} >= ${d.p(now)})`;
}

/** The WHERE clause (with `WHERE`, or empty) of the query's filters. */
export function pageWhere(d: PageDialect, q: DevicePageQuery): string {
  const where: string[] = [];
  if (q.q !== undefined && q.q !== '') {
    const needle = q.q.toLowerCase();
    where.push(`(${d.position('lower(d.id)', d.p(needle))} > 0 OR ${d.position("lower(COALESCE(d.user_id, ''))", d.p(needle))} > 0)`);
  }
  if (q.tag !== undefined) {
    // A tag no device can carry is a typo, not an empty selection.
    assertTag(q.tag);
    where.push(`d.id IN (SELECT device_id FROM device_tags WHERE tag = ${d.p(q.tag)})`);
  }
  if (q.userId !== undefined) where.push(`d.user_id = ${d.p(q.userId)}`);
  if (q.online !== undefined) where.push(q.online ? onlineSql(d, q.now) : `NOT ${onlineSql(d, q.now)}`);
  if (q.version !== undefined) where.push(q.version === null ? `${d.version} IS NULL` : `${d.version} = ${d.p(q.version)}`);
  if (q.flagged !== undefined) where.push(q.flagged ? 'd.flagged_at IS NOT NULL' : 'd.flagged_at IS NULL');
  return where.length ? `WHERE ${where.join(' AND ')}` : '';
}

/** ORDER BY (and LIMIT/OFFSET) of the query: nulls last in either direction, ties by id. */
export function pageOrder(d: PageDialect, q: DevicePageQuery): string {
  const dir = q.dir === 'desc' ? 'DESC' : 'ASC';
  // A nullable key's nulls go last: (key IS NULL) first. Each placeholder appears once in the text (SQLite's are positional).
  const nullable = (key: string): string => `(${key} IS NULL) ASC, ${key} ${dir}, d.id ${dir}`;
  const order = (() => {
    switch (q.sort ?? 'id') {
      case 'id':
        return `d.id ${dir}`;
      case 'user':
        return nullable('d.user_id');
      case 'last_seen':
        return nullable('d.last_seen_at');
      case 'version':
        return nullable(d.version);
      case 'status':
        // online 0, offline 1, never reported 2.
        return `(CASE WHEN ${onlineSql(d, q.now)} THEN 0 WHEN d.last_seen_at IS NULL THEN 2 ELSE 1 END) ${dir}, d.id ${dir}`;
    }
  })();
  const limit = q.limit === undefined ? '' : ` LIMIT ${d.p(q.limit)} OFFSET ${d.p(q.offset ?? 0)}`;
  // Without a limit, an offset still skips (SQLite needs a LIMIT for OFFSET: -1 is none; PostgreSQL: LIMIT ALL).
  const offsetOnly = q.limit === undefined && (q.offset ?? 0) > 0 ? ` LIMIT ${d.p(Number.MAX_SAFE_INTEGER)} OFFSET ${d.p(q.offset)}` : '';
  return `ORDER BY ${order}${limit}${offsetOnly}`;
}
