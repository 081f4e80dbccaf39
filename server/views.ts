/** JSON views of registry records, as the HTTP API and `device show --json` print them. */
import type { CommandRecord, DeviceRecord } from './registry/types.js';

const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());

export type CommandStatus = 'pending' | 'sent' | 'applied' | 'rejected' | 'failed' | 'expired';

/** `applied`/`rejected`/`failed` once acked; `expired` when unanswered past its exp; else `sent` or `pending`. */
export function commandStatus(c: CommandRecord, now = Date.now()): CommandStatus {
  if (c.ackStatus) return c.ackStatus;
  if (c.expiresAt <= now) return 'expired';
  return c.sentAt === null ? 'pending' : 'sent';
}

export function commandView(c: CommandRecord, now = Date.now()): Record<string, unknown> {
  return {
    jti: c.jti,
    device_id: c.deviceId,
    action: c.action,
    user_id: c.userId,
    seq: c.seq,
    params_digest: c.paramsDigest,
    encryption_kid: c.encryptionKid,
    status: commandStatus(c, now),
    code: c.ackCode,
    detail: c.ackDetail,
    result: c.ackResult,
    fanout_id: c.fanoutId,
    created_at: iso(c.createdAt),
    sent_at: iso(c.sentAt),
    expires_at: iso(c.expiresAt),
    acked_at: iso(c.ackedAt),
  };
}

export function deviceView(d: DeviceRecord): Record<string, unknown> {
  return {
    id: d.id,
    user_id: d.userId,
    state: d.state,
    origin: d.origin,
    next_seq: d.nextSeq,
    signing_kid: d.signing?.kid ?? null,
    encryption_kid: d.encryption?.kid ?? null,
    encryption_alg: d.encryption?.alg ?? null,
    keys: d.keys.map((k) => ({ kid: k.kid, use: k.use, alg: k.jwk.alg, status: k.status, added_at: iso(k.addedAt), retired_at: iso(k.retiredAt) })),
    created_at: iso(d.createdAt),
    updated_at: iso(d.updatedAt),
    enrolled_at: iso(d.enrolledAt),
    confirmed_at: iso(d.confirmedAt),
    decommissioned_at: iso(d.decommissionedAt),
    // Set by a security event (an ack contradicting a recorded outcome); null when none.
    security_flag: d.flag ? { at: iso(d.flag.at), event: d.flag.event, ...d.flag.detail } : null,
  };
}
