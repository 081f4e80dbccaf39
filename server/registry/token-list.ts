/**
 * Enrollment tokens as an operator sees them (`token list`), and the boards
 * bundled but never enrolled (`device list --pending`): a token was issued for
 * the device id (bundle, token create) and no enrollment was accepted for it.
 * The token text is never stored; only its metadata is listed.
 */
import type { Registry } from './registry.js';

export type TokenStatus = 'valid' | 'used' | 'expired';

export interface TokenListing {
  deviceId: string;
  userId: string;
  createdAt: number;
  expiresAt: number;
  usedAt: number | null;
  status: TokenStatus;
  /** When the device enrolled (with this token or another), null if it never did. */
  enrolledAt: number | null;
  /** The device's registry state, null when it is not registered (bundled without --keys-on-host, not enrolled yet). */
  deviceState: string | null;
}

interface Row {
  device_id: string;
  user_id: string;
  created_at: number;
  expires_at: number;
  used_at: number | null;
  enrolled_at: number | null;
  state: string | null;
}

function listing(r: Row, now: number): TokenListing {
  return {
    deviceId: r.device_id,
    userId: r.user_id,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    usedAt: r.used_at,
    status: r.used_at !== null ? 'used' : r.expires_at <= now ? 'expired' : 'valid',
    enrolledAt: r.enrolled_at,
    deviceState: r.state,
  };
}

const SELECT = `SELECT t.device_id, t.user_id, t.created_at, t.expires_at, t.used_at, d.enrolled_at, d.state
  FROM enrollment_tokens t LEFT JOIN devices d ON d.id = t.device_id`;

/** Every token (or those of one device), newest first. */
export function listTokens(registry: Registry, filter: { deviceId?: string } = {}): TokenListing[] {
  const now = registry.now();
  const rows = (
    filter.deviceId === undefined
      ? registry.db.prepare(`${SELECT} ORDER BY t.created_at DESC, t.device_id`).all()
      : registry.db.prepare(`${SELECT} WHERE t.device_id = ? ORDER BY t.created_at DESC`).all(filter.deviceId)
  ) as Row[];
  return rows.map((r) => listing(r, now));
}

/**
 * Devices whose newest token is unused and that have not enrolled since it was
 * issued (a board bundled, or re-bundled, and never enrolled), with that token
 * (still valid or expired: whether the board can still enroll with it).
 */
export function pendingEnrollments(registry: Registry): TokenListing[] {
  const now = registry.now();
  const rows = registry.db
    .prepare(
      `${SELECT} WHERE t.used_at IS NULL AND (d.enrolled_at IS NULL OR d.enrolled_at < t.created_at)
         AND t.created_at = (SELECT MAX(created_at) FROM enrollment_tokens u WHERE u.device_id = t.device_id)
       ORDER BY t.device_id`,
    )
    .all() as Row[];
  return rows.map((r) => listing(r, now));
}

export function tokenView(t: TokenListing): Record<string, unknown> {
  const iso = (v: number | null): string | null => (v === null ? null : new Date(v).toISOString());
  return {
    device_id: t.deviceId,
    user_id: t.userId,
    created_at: iso(t.createdAt),
    expires_at: iso(t.expiresAt),
    used_at: iso(t.usedAt),
    status: t.status,
    enrolled_at: iso(t.enrolledAt),
    device_state: t.deviceState,
  };
}
