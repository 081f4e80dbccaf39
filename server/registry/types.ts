/** Records the registry returns. Times are milliseconds since the epoch. */
import type { AckStatus, PublicJwk, ReportClaims } from '../../protocol/index.js';

export const DEVICE_STATES = ['registered', 'enrolling', 'provisioned', 'decommissioned'] as const;
export type DeviceState = (typeof DEVICE_STATES)[number];
export type DeviceOrigin = 'enrollment' | 'jwks' | 'legacy' | 'host-keys';

export interface DeviceKeyRecord {
  kid: string;
  use: 'sig' | 'enc';
  status: 'current' | 'previous' | 'retired';
  jwk: PublicJwk;
  addedAt: number;
  retiredAt: number | null;
}

export interface DeviceRecord {
  id: string;
  userId: string | null;
  state: DeviceState;
  nextSeq: number;
  origin: DeviceOrigin;
  createdAt: number;
  updatedAt: number;
  enrolledAt: number | null;
  confirmedAt: number | null;
  decommissionedAt: number | null;
  /**
   * Set when an authenticated ack contradicted the recorded outcome of one of its
   * commands (a command recorded as refused later reported applied, or the
   * reverse): the registry can no longer vouch for the device's keys, user or
   * settings. Cleared by a new enrollment or `device add --replace`.
   */
  flag: DeviceFlag | null;
  /** Current signing key (verifies acks), when registered. */
  signing: PublicJwk | undefined;
  /** Current encryption key (commands are sealed to it), when registered. */
  encryption: PublicJwk | undefined;
  keys: DeviceKeyRecord[];
  tags: string[];
  presence: DevicePresenceRecord;
  /** The CPU architecture (arm64, armv7, x64), from its reports and when an upgrade to a release of it was applied; null: not known yet. */
  arch: string | null;
  /** The running agent version: its last report's agent_version, or an applied upgrade's result.version. */
  agentVersion: string | null;
}

/** What the device's signed reports said, and when the server received them. */
export interface DevicePresenceRecord {
  /** When the server received the last accepted report (its own clock, never the board's). */
  lastSeenAt: number | null;
  /** `online` after a connect or interval report, `offline` after the device's will or clean stop for its current connection. */
  reported: 'online' | 'offline' | null;
  session: string | null;
  conn: number | null;
  /** The report interval the device announced. */
  intervalS: number | null;
  /** The last report's reported state. */
  state: ReportedState | null;
}

/** What the last report said (its claims without the envelope ones). */
export type ReportedState = Pick<
  ReportClaims,
  'reason' | 'iat' | 'agent_version' | 'node_version' | 'last_seq' | 'kids' | 'settings_digest' | 'uptime_s' | 'selftest' | 'upgrade'
>;

export interface DeviceFlag {
  at: number;
  /** The audit event that set it, e.g. `security.ack_contradiction`. */
  event: string;
  detail: Record<string, unknown>;
}

export interface CommandRecord {
  jti: string;
  deviceId: string;
  action: string;
  userId: string;
  paramsDigest: string;
  seq: number;
  encryptionKid: string;
  fanoutId: string | null;
  createdAt: number;
  expiresAt: number;
  sentAt: number | null;
  ackStatus: AckStatus | null;
  ackCode: string | null;
  ackDetail: string | null;
  ackJti: string | null;
  ackResult: Record<string, unknown> | null;
  ackedAt: number | null;
  /** Sealed and recorded but never published: its sender lost the rollout lease (fencing) first. Nothing re-publishes it. */
  voidedAt: number | null;
  /** The user the device is bound to once this command is applied (request; update with user_id), else null. */
  bindUser: string | null;
  /** For an upgrade: the SHA-256 of the release artifact it names (what the chunk server serves the device while it is in flight). */
  releaseSha256: string | null;
}

export interface AuditRecord {
  id: number;
  at: number;
  event: string;
  deviceId: string | null;
  detail: Record<string, unknown>;
}

