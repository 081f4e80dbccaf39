/**
 * Reading the audit log with filters (provision-server audit, GET /audit): by
 * device, by rollout (the rollout's own events and the commands it sealed), by
 * event (`command.ack`, or every `rollout.*` with `rollout`), and by time. The
 * indexes are migration 4's.
 */
import type { Registry } from './registry.js';
import type { AuditRecord } from './types.js';

export const DEFAULT_AUDIT_LIMIT = 100;
export const MAX_AUDIT_LIMIT = 10_000;

export interface AuditFilter {
  deviceId?: string;
  rolloutId?: string;
  /** An event name (`command.ack`) or a prefix of dotted names (`rollout` matches `rollout.create`, ...). */
  event?: string;
  /** At or after (ms since the epoch). */
  since?: number;
  /** At or before (ms since the epoch). */
  until?: number;
  /** The newest this many rows that match (default 100). */
  limit?: number;
}

/** The newest `limit` audit rows matching `f`, oldest first. */
export function queryAudit(registry: Registry, f: AuditFilter): AuditRecord[] {
  const where: string[] = [];
  const args: (string | number)[] = [];
  if (f.deviceId !== undefined) {
    where.push('device_id = ?');
    args.push(f.deviceId);
  }
  if (f.rolloutId !== undefined) {
    // The expression of the index audit_rollout: a rollout's events carry rollout_id, the commands it sealed fanout_id.
    where.push("COALESCE(json_extract(detail, '$.rollout_id'), json_extract(detail, '$.fanout_id')) = ?");
    args.push(f.rolloutId);
  }
  if (f.event !== undefined) {
    where.push("(event = ? OR event LIKE ? ESCAPE '\\')");
    args.push(f.event, `${f.event.replace(/[\\%_]/g, (c) => `\\${c}`)}.%`);
  }
  if (f.since !== undefined) {
    where.push('at >= ?');
    args.push(f.since);
  }
  if (f.until !== undefined) {
    where.push('at <= ?');
    args.push(f.until);
  }
  const rows = registry.db
    .prepare(`SELECT * FROM audit ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`)
    .all(...args, f.limit ?? DEFAULT_AUDIT_LIMIT) as { id: number; at: number; event: string; device_id: string | null; detail: string }[];
  return rows.reverse().map((r) => ({ id: r.id, at: r.at, event: r.event, deviceId: r.device_id, detail: JSON.parse(r.detail) as Record<string, unknown> }));
}
