/** JSON views of registry records, as the HTTP API and `device show --json` print them. */
import { presenceOf } from '../core/presence.js';
import type { CommandRecord, DeviceRecord, TokenListing } from '../storage/records.js';

const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());

export type CommandStatus = 'pending' | 'sent' | 'applied' | 'rejected' | 'failed' | 'rolled_back' | 'expired' | 'void';

/**
 * `applied`/`rejected`/`failed`/`rolled_back` once acked; `void` when it was never published (a rollout
 * engine that lost its lease sealed it); `expired` when unanswered past its exp; else `sent` or `pending`.
 */
export function commandStatus(c: CommandRecord, now = Date.now()): CommandStatus {
  if (c.ackStatus) return c.ackStatus;
  if (c.voidedAt !== null) return 'void';
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
    ...(c.releaseSha256 !== null ? { release_sha256: c.releaseSha256 } : {}),
    created_at: iso(c.createdAt),
    sent_at: iso(c.sentAt),
    expires_at: iso(c.expiresAt),
    acked_at: iso(c.ackedAt),
  };
}

export function deviceView(d: DeviceRecord, now = Date.now()): Record<string, unknown> {
  const reported = d.presence.state;
  return {
    id: d.id,
    user_id: d.userId,
    state: d.state,
    tags: d.tags,
    // From the device's signed reports: online / offline, or unknown when it never reported.
    presence: presenceOf(d.presence, now),
    // The running agent version (its reports' agent_version, or an applied upgrade's), its architecture when
    // known (recorded by an applied upgrade), and the upgrade under way as its last report said (null: none).
    version: d.agentVersion,
    arch: d.arch,
    upgrade: reported?.upgrade ?? null,
    last_seen_at: iso(d.presence.lastSeenAt),
    report_interval_s: d.presence.intervalS,
    reported: reported
      ? {
          reason: reported.reason,
          agent_version: reported.agent_version,
          node_version: reported.node_version,
          last_seq: reported.last_seq,
          kids: reported.kids,
          // The keys the board says it holds differ from the registered ones (a rotate the registry missed, or a wrong board).
          kids_match: reported.kids.sig === (d.signing?.kid ?? null) && reported.kids.enc === (d.encryption?.kid ?? null),
          settings_digest: reported.settings_digest,
          uptime_s: reported.uptime_s,
          selftest: reported.selftest ? { ok: reported.selftest.ok, at: iso(reported.selftest.at * 1000) } : null,
        }
      : null,
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

/** An enrollment token's metadata as `token list --json` and `device list --pending --json` print it. */
export function tokenView(t: TokenListing): Record<string, unknown> {
  const iso = (v: number | null): string | null => (v === null ? null : new Date(v).toISOString());
  return {
    id: t.id,
    device_id: t.deviceId,
    user_id: t.userId,
    created_at: iso(t.createdAt),
    expires_at: iso(t.expiresAt),
    used_at: iso(t.usedAt),
    revoked_at: iso(t.revokedAt),
    status: t.status,
    enrolled_at: iso(t.enrolledAt),
    device_state: t.deviceState,
  };
}
