/**
 * The plan's queries on SQLite (server/rollouts/plan.ts asks them through
 * storage.rollouts.summarize / sampleIds): the selector resolved inside
 * SQLite, PLAN_CHUNK devices at a time with the event loop free in between,
 * never a list of the fleet in memory.
 */
import { PRESENCE_GRACE } from '../../core/presence.js';
import type { Registry } from '../../registry/registry.js';
import { PLAN_CHUNK, selectorCondition, targetProblemSql, type RolloutSelector } from '../../registry/rollouts.js';
import type { PlanSummary } from '../records.js';

/**
 * Counts the devices a selector matches by presence (as presenceOf tells it),
 * and those not sendable, in SQL, PLAN_CHUNK devices at a time with the event
 * loop free in between.
 */
export async function summarize(registry: Registry, selector: RolloutSelector, needsDeviceUser: boolean, now: number): Promise<PlanSummary> {
  const where = selectorCondition(registry, selector);
  const chunk = registry.db.prepare(
    `SELECT COUNT(*) AS targets, COALESCE(SUM(seen IS NULL), 0) AS unknown, COALESCE(SUM(online), 0) AS online,
       COALESCE(SUM(problem IS NOT NULL), 0) AS notSendable, MAX(id) AS last
     FROM (SELECT d.id AS id, d.last_seen_at AS seen, ${targetProblemSql(needsDeviceUser)} AS problem,
             (d.last_seen_at IS NOT NULL AND d.presence = 'online' AND d.last_seen_at + COALESCE(d.report_interval_s, 0) * ? >= ?) AS online
           FROM devices d WHERE d.id > ? AND ${where.sql} ORDER BY d.id LIMIT ?)`,
  );
  const sum: PlanSummary = { targets: 0, online: 0, offline: 0, unknown: 0, notSendable: 0 };
  let after = '';
  for (;;) {
    const row = chunk.get(PRESENCE_GRACE * 1000, now, after, ...where.args, PLAN_CHUNK) as {
      targets: number;
      unknown: number;
      online: number;
      notSendable: number;
      last: string | null;
    };
    sum.targets += row.targets;
    sum.online += row.online;
    sum.unknown += row.unknown;
    sum.notSendable += row.notSendable;
    if (row.targets < PLAN_CHUNK || row.last === null) break;
    after = row.last;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  sum.offline = sum.targets - sum.online - sum.unknown;
  return sum;
}

/** The ids of the first `limit` devices a selector matches: named devices in their order, the others by id. */
export function sampleIds(registry: Registry, selector: RolloutSelector, limit: number): string[] {
  if ('devices' in selector) return selector.devices.slice(0, limit);
  const where = selectorCondition(registry, selector);
  return (registry.db.prepare(`SELECT d.id AS id FROM devices d WHERE ${where.sql} ORDER BY d.id LIMIT ?`).all(...where.args, limit) as { id: string }[]).map(
    (r) => r.id,
  );
}
