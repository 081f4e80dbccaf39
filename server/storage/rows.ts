/**
 * The registry's rows and the records they map to, shared by both
 * implementations (server/storage/sqlite/, server/storage/postgres/) and the
 * migration between them: the two have the same tables and columns, and the
 * PostgreSQL pool parses INT8 and NUMERIC to Number (postgres/db.ts), so a row
 * has the same JavaScript shape from either. Pure: no I/O, no SQL; each
 * implementation keeps its own queries.
 */
import type { PublicJwk } from '../../protocol/index.js';
import type {
  CommandRecord,
  DeviceKeyRecord,
  DeviceOrigin,
  DeviceRecord,
  DeviceState,
  ReleaseRecord,
  ReportedState,
  RolloutRecord,
  RolloutSelector,
  RolloutState,
  TargetRecord,
  TargetState,
  TokenListing,
} from './records.js';
import { deviceFlag } from './rules.js';

// ---- devices ----------------------------------------------------------------------

export interface DeviceRow {
  id: string;
  user_id: string | null;
  state: DeviceState;
  next_seq: number;
  origin: DeviceOrigin;
  created_at: number;
  updated_at: number;
  enrolled_at: number | null;
  confirmed_at: number | null;
  decommissioned_at: number | null;
  flagged_at: number | null;
  flag: string | null;
  last_seen_at: number | null;
  presence: 'online' | 'offline' | null;
  presence_session: string | null;
  presence_conn: number | null;
  report_interval_s: number | null;
  reported: string | null;
  reported_at: number | null;
  last_report_jti: string | null;
  report_run: number | null;
  report_n: number | null;
  arch: string | null;
  agent_version: string | null;
}

export interface KeyRow {
  device_id: string;
  kid: string;
  use: 'sig' | 'enc';
  jwk: string;
  status: 'current' | 'previous' | 'retired';
  added_at: number;
  retired_at: number | null;
}

export function keyRecord(k: Omit<KeyRow, 'device_id'>): DeviceKeyRecord {
  return {
    kid: k.kid,
    use: k.use,
    status: k.status,
    jwk: JSON.parse(k.jwk) as PublicJwk,
    addedAt: k.added_at,
    retiredAt: k.retired_at,
  };
}

/** The device of `row`, with its keys (oldest first) and tags (sorted), as each implementation reads them. */
export function deviceRecord(row: DeviceRow, keys: DeviceKeyRecord[], tags: string[]): DeviceRecord {
  const current = (use: 'sig' | 'enc'): PublicJwk | undefined =>
    row.state === 'decommissioned' ? undefined : keys.find((k) => k.use === use && k.status === 'current')?.jwk;
  const reported = row.reported === null ? null : (JSON.parse(row.reported) as ReportedState);
  return {
    id: row.id,
    userId: row.user_id,
    state: row.state,
    nextSeq: row.next_seq,
    origin: row.origin,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    enrolledAt: row.enrolled_at,
    confirmedAt: row.confirmed_at,
    decommissionedAt: row.decommissioned_at,
    flag: row.flagged_at === null ? null : deviceFlag(row.flagged_at, row.flag),
    signing: current('sig'),
    encryption: current('enc'),
    keys,
    tags,
    presence: {
      lastSeenAt: row.last_seen_at,
      reported: row.presence,
      session: row.presence_session,
      conn: row.presence_conn,
      intervalS: row.report_interval_s,
      state: reported,
    },
    arch: row.arch,
    agentVersion: row.agent_version ?? reported?.agent_version ?? null,
  };
}

// ---- commands ---------------------------------------------------------------------

export interface CommandRow {
  jti: string;
  device_id: string;
  action: string;
  user_id: string;
  params_digest: string;
  seq: number;
  encryption_kid: string;
  sealed: string;
  fanout_id: string | null;
  bind_user: string | null;
  created_at: number;
  expires_at: number;
  sent_at: number | null;
  ack_status: CommandRecord['ackStatus'];
  ack_code: string | null;
  ack_detail: string | null;
  ack_jti: string | null;
  ack_result: string | null;
  acked_at: number | null;
  voided_at: number | null;
  release_sha256: string | null;
}

export function commandRecord(row: CommandRow): CommandRecord {
  return {
    jti: row.jti,
    deviceId: row.device_id,
    action: row.action,
    userId: row.user_id,
    paramsDigest: row.params_digest,
    seq: row.seq,
    encryptionKid: row.encryption_kid,
    fanoutId: row.fanout_id,
    bindUser: row.bind_user,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    sentAt: row.sent_at,
    ackStatus: row.ack_status,
    ackCode: row.ack_code,
    ackDetail: row.ack_detail,
    ackJti: row.ack_jti,
    ackResult: row.ack_result === null ? null : (JSON.parse(row.ack_result) as Record<string, unknown>),
    ackedAt: row.acked_at,
    voidedAt: row.voided_at,
    releaseSha256: row.release_sha256,
  };
}

// ---- enrollment tokens ------------------------------------------------------------

export interface TokenRow {
  hash: string;
  device_id: string;
  user_id: string;
  created_at: number;
  expires_at: number;
  used_at: number | null;
  used_by: string | null;
  revoked_at: number | null;
}

/** A token with its device's enrollment and state (enrollment_tokens t LEFT JOIN devices d). */
export interface TokenListingRow {
  hash: string;
  revoked_at: number | null;
  device_id: string;
  user_id: string;
  created_at: number;
  expires_at: number;
  used_at: number | null;
  enrolled_at: number | null;
  state: string | null;
}

/** An enrollment token's id: the first TOKEN_ID_LENGTH hex digits of its stored hash. */
export const TOKEN_ID_LENGTH = 16;
export const tokenId = (hash: string): string => hash.slice(0, TOKEN_ID_LENGTH);

export function tokenListing(r: TokenListingRow, now: number): TokenListing {
  return {
    id: tokenId(r.hash),
    deviceId: r.device_id,
    userId: r.user_id,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    usedAt: r.used_at,
    revokedAt: r.revoked_at,
    status: r.used_at !== null ? 'used' : r.revoked_at !== null ? 'revoked' : r.expires_at <= now ? 'expired' : 'valid',
    enrolledAt: r.enrolled_at,
    deviceState: r.state,
  };
}

// ---- releases ---------------------------------------------------------------------

/** The releases table: the record's columns as they are named, and its two times. */
export type ReleaseRow = Pick<ReleaseRecord, 'id' | 'version' | 'arch' | 'bytes' | 'sha256' | 'manifest' | 'dir'> & {
  added_at: number;
  removed_at: number | null;
};

export function releaseRecord(r: ReleaseRow): ReleaseRecord {
  return {
    id: r.id,
    version: r.version,
    arch: r.arch,
    bytes: r.bytes,
    sha256: r.sha256,
    manifest: r.manifest,
    dir: r.dir,
    addedAt: r.added_at,
    removedAt: r.removed_at,
  };
}

// ---- rollouts ---------------------------------------------------------------------

export interface RolloutRow {
  id: string;
  created_at: number;
  action: string;
  params: string;
  user_id: string | null;
  selector: string;
  ttl_s: number;
  deadline_at: number;
  rate_per_min: number | null;
  ramp_from: number | null;
  ramp_factor: number | null;
  abort_percent: number | null;
  abort_min: number;
  concurrency: number;
  state: RolloutState;
  state_reason: string | null;
  updated_at: number;
  finished_at: number | null;
  planning: number;
  retry_of: string | null;
}

export interface TargetRow {
  rollout_id: string;
  device_id: string;
  state: TargetState;
  jti: string | null;
  attempts: number;
  code: string | null;
  sent_at: number | null;
  next_at: number | null;
  updated_at: number;
}

export function rolloutRecord(row: RolloutRow): RolloutRecord {
  return {
    id: row.id,
    createdAt: row.created_at,
    action: row.action,
    params: JSON.parse(row.params) as Record<string, unknown>,
    ...(row.user_id !== null ? { userId: row.user_id } : {}),
    selector: JSON.parse(row.selector) as RolloutSelector,
    ttlSeconds: row.ttl_s,
    deadlineAt: row.deadline_at,
    ...(row.rate_per_min !== null ? { ratePerMin: row.rate_per_min } : {}),
    ...(row.ramp_from !== null ? { rampFrom: row.ramp_from } : {}),
    ...(row.ramp_factor !== null ? { rampFactor: row.ramp_factor } : {}),
    ...(row.abort_percent !== null ? { abortPercent: row.abort_percent } : {}),
    abortMin: row.abort_min,
    concurrency: row.concurrency,
    planning: row.planning === 1,
    state: row.state,
    stateReason: row.state_reason,
    updatedAt: row.updated_at,
    finishedAt: row.finished_at,
    retryOf: row.retry_of,
  };
}

export function targetRecord(row: TargetRow): TargetRecord {
  return {
    rolloutId: row.rollout_id,
    deviceId: row.device_id,
    state: row.state,
    jti: row.jti,
    attempts: row.attempts,
    code: row.code,
    sentAt: row.sent_at,
    nextAt: row.next_at,
    updatedAt: row.updated_at,
  };
}
