/**
 * The SQLite registry's rows and the records they map to, shared by the
 * stores of this implementation (a device record is read by devices, seq and
 * enrollment; a command record by commands).
 */
import type Database from 'better-sqlite3';
import type { PublicJwk } from '../../../protocol/index.js';
import type { CommandRecord, DeviceKeyRecord, DeviceOrigin, DeviceRecord, DeviceState, ReportedState } from '../records.js';
import { deviceFlag } from '../rules.js';

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

/** The device's tags, sorted. */
export function tagsOf(db: Database.Database, deviceId: string): string[] {
  return (db.prepare('SELECT tag FROM device_tags WHERE device_id = ? ORDER BY tag').all(deviceId) as { tag: string }[]).map((r) => r.tag);
}

export function deviceRecord(db: Database.Database, row: DeviceRow): DeviceRecord {
  const keys = (db.prepare('SELECT * FROM device_keys WHERE device_id = ? ORDER BY added_at, kid').all(row.id) as KeyRow[]).map((k): DeviceKeyRecord => ({
    kid: k.kid,
    use: k.use,
    status: k.status,
    jwk: JSON.parse(k.jwk) as PublicJwk,
    addedAt: k.added_at,
    retiredAt: k.retired_at,
  }));
  const current = (use: 'sig' | 'enc'): PublicJwk | undefined =>
    row.state === 'decommissioned' ? undefined : keys.find((k) => k.use === use && k.status === 'current')?.jwk;
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
    tags: tagsOf(db, row.id),
    presence: {
      lastSeenAt: row.last_seen_at,
      reported: row.presence,
      session: row.presence_session,
      conn: row.presence_conn,
      intervalS: row.report_interval_s,
      state: row.reported === null ? null : (JSON.parse(row.reported) as ReportedState),
    },
    arch: row.arch,
    agentVersion: row.agent_version ?? (row.reported === null ? null : ((JSON.parse(row.reported) as ReportedState).agent_version ?? null)),
  };
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
