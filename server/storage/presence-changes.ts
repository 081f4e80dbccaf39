/**
 * What a recorded report changes in a device's presence history
 * (device_presence, GET /devices/{id}/presence), one rule for both backends:
 * - a connect or interval report makes an offline (or never seen) device
 *   online (reason: the report's);
 * - an offline report (its will, or a clean stop) makes an online device
 *   offline (reason `offline`);
 * - a device recorded online whose last report is older than the grace
 *   (PRESENCE_GRACE x its interval) went offline when the grace lapsed:
 *   recorded when its next report arrives (reason `timeout`, at that time),
 *   before what the report itself changes. Nothing is recorded by a timer.
 */
import type { ReportClaims } from '../../protocol/index.js';
import { PRESENCE_GRACE } from '../core/presence.js';
import type { DeviceRow } from './rows.js';

export interface PresenceChangeInput {
  at: number;
  presence: 'online' | 'offline';
  reason: string;
  session: string | null;
  conn: number | null;
}

/** The audit event of a report that moved a device's presence (server/audit/verify.ts checks its report_jws). */
export const PRESENCE_EVENT = 'device.presence';

/**
 * The audit detail of a recorded report that moved the device's presence:
 * the changes, and the board's signed report (`report_jws`) for `audit
 * verify`; undefined when it moved nothing.
 */
export function presenceAuditDetail(
  changes: readonly PresenceChangeInput[],
  claims: Pick<ReportClaims, 'jti' | 'reason'>,
  signed?: string,
): Record<string, unknown> | undefined {
  const last = changes[changes.length - 1];
  if (!last) return undefined;
  return {
    presence: last.presence,
    changes: changes.map((c) => ({ at: c.at, presence: c.presence, reason: c.reason })),
    report_jti: claims.jti,
    report_reason: claims.reason,
    ...(signed !== undefined ? { report_jws: signed } : {}),
  };
}

export function presenceChanges(
  row: Pick<DeviceRow, 'presence' | 'last_seen_at' | 'report_interval_s'>,
  claims: Pick<ReportClaims, 'reason' | 'session' | 'conn'>,
  now: number,
): PresenceChangeInput[] {
  const { session, conn } = claims;
  const changes: PresenceChangeInput[] = [];
  let wasOnline = row.presence === 'online';
  if (wasOnline && row.last_seen_at !== null) {
    const lapse = row.last_seen_at + (row.report_interval_s ?? 0) * PRESENCE_GRACE * 1000;
    if (lapse < now) {
      changes.push({ at: lapse, presence: 'offline', reason: 'timeout', session, conn });
      wasOnline = false;
    }
  }
  if (claims.reason === 'offline') {
    if (wasOnline) changes.push({ at: now, presence: 'offline', reason: 'offline', session, conn });
  } else if (!wasOnline) {
    changes.push({ at: now, presence: 'online', reason: claims.reason, session, conn });
  }
  return changes;
}
