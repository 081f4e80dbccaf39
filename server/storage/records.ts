/**
 * The records storage returns and takes, whichever implementation (SQLite,
 * PostgreSQL). Times are milliseconds since the epoch.
 */
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

// ---- inputs and outcomes of devices and commands ----------------------------------

export interface NewDevice {
  id: string;
  userId: string | null;
  origin: DeviceOrigin;
  signing?: PublicJwk;
  encryption: PublicJwk;
  state?: DeviceState;
}

export interface NewCommand {
  jti: string;
  deviceId: string;
  action: string;
  userId: string;
  paramsDigest: string;
  seq: number;
  encryptionKid: string;
  sealed: string;
  expiresAt: number;
  fanoutId?: string;
  bindUser?: string;
  /** An upgrade's release artifact (SHA-256 hex). */
  releaseSha256?: string;
  /** Who asked (its command.create audit row names them): `via` e.g. 'http', `by` the principal's name. */
  via?: string;
  by?: string;
}

/** What recording an ack did. */
export type AckRecordOutcome =
  | { kind: 'recorded'; command: CommandRecord }
  | { kind: 'duplicate'; command: CommandRecord }
  /** The ack says applied where the recorded outcome says not (or another key set for a rotate): audited, device flagged, effects not applied. */
  | { kind: 'contradiction'; command: CommandRecord }
  | { kind: 'unknown-command' };

/** What recording a verified report did. */
export type ReportRecordOutcome =
  | { kind: 'recorded'; presence: 'online' | 'offline' }
  /** The same report again (a redelivery): nothing changed. */
  | { kind: 'duplicate' }
  /**
   * Not newer than the newest report recorded (a replay, a will of a connection the device has
   * left, a legacy report from a device that sends positions): ignored, nothing changed.
   */
  | { kind: 'stale' };

// ---- rollouts ---------------------------------------------------------------------

export const ROLLOUT_STATES = ['running', 'paused', 'aborted', 'cancelled', 'completed'] as const;
export type RolloutState = (typeof ROLLOUT_STATES)[number];
/** `rolled_back`: an upgrade the board installed, ran, and switched back (it failed its health gate): a failure for abort rules. */
export const TARGET_STATES = ['pending', 'sending', 'sent', 'applied', 'rejected', 'failed', 'rolled_back', 'expired', 'cancelled', 'not sent'] as const;
export type TargetState = (typeof TARGET_STATES)[number];
/** Target states that are final. */
export const FINAL_TARGET_STATES: readonly TargetState[] = ['applied', 'rejected', 'failed', 'rolled_back', 'expired', 'cancelled', 'not sent'];

/**
 * Which devices a rollout goes to. `retryOf` (rollout retry): the devices of
 * that rollout's targets in `states`, resolved in SQL (no list of ids held or
 * stored); a device removed from the registry since simply drops out.
 */
export type RolloutSelector = { all: true } | { userId: string } | { tag: string } | { devices: string[] } | { retryOf: string; states: TargetState[] };

/** A named-device list longer than this is recorded in the audit (and serve's log line) as its count only. */
export const AUDIT_MAX_LISTED_DEVICES = 20;

/** A selector as the audit records it: a long list of named devices as its count. */
export function selectorForAudit(selector: RolloutSelector): RolloutSelector | { devices_named: number } {
  return 'devices' in selector && selector.devices.length > AUDIT_MAX_LISTED_DEVICES ? { devices_named: selector.devices.length } : selector;
}

/**
 * A rollout still `planning` (its targets being recorded) whose heartbeat
 * (updated_at, renewed per chunk recorded) is older than this was left by a
 * process that stopped mid-way (a crash, Ctrl-C): the engine finishes it.
 */
export const PLANNING_STALE_MS = 60_000;

export interface RolloutSpec {
  action: string;
  params: Record<string, unknown>;
  /** The command's user_id (default: each device's user). */
  userId?: string;
  selector: RolloutSelector;
  /** Lifetime of each sealed command (capped at the deadline). */
  ttlSeconds: number;
  /** Nothing is delivered after this (ms since the epoch). */
  deadlineAt: number;
  /** Commands sealed per minute at most; undefined: no rate limit (concurrency only). */
  ratePerMin?: number;
  /** Exponential ramp: start at this rate, multiply by rampFactor each time as many devices applied as the current rate. */
  rampFrom?: number;
  rampFactor?: number;
  /** Abort when failures (rejected + failed + rolled back) reach this percentage of results ... */
  abortPercent?: number;
  /** ... once there are at least this many results. */
  abortMin: number;
  /** Commands in flight (sent, unanswered, still valid) at most. */
  concurrency: number;
}

export interface RolloutRecord extends RolloutSpec {
  id: string;
  createdAt: number;
  /** Its targets are still being recorded (createFromSelector): not driven yet. */
  planning: boolean;
  state: RolloutState;
  stateReason: string | null;
  updatedAt: number;
  finishedAt: number | null;
  /** The rollout whose targets that did not apply this one retries (rollout retry), if any. */
  retryOf: string | null;
}

export interface TargetRecord {
  rolloutId: string;
  deviceId: string;
  state: TargetState;
  jti: string | null;
  attempts: number;
  code: string | null;
  sentAt: number | null;
  /** Not sent to before this (the backoff after the board refused a command as expired). */
  nextAt: number | null;
  updatedAt: number;
}

/**
 * The rollout lease as one engine holds it: its holder and generation (the
 * fencing token, grown each time the lease is taken by a holder that did not
 * hold it live). Every claim and mark-sent checks both, and that the lease is
 * unexpired, in its own transaction: an engine that lost the lease (stalled
 * past its expiry) changes nothing and so publishes nothing.
 */
export interface Lease {
  name: string;
  holder: string;
  generation: number;
  /** How long each renewal keeps it. */
  ttlMs: number;
}

/** Targets recorded per transaction when a rollout is created from its selector (createFromSelector). */
export const PLAN_CHUNK = 2000;

export type TargetCounts = Record<TargetState, number>;

export function emptyCounts(): TargetCounts {
  return Object.fromEntries(TARGET_STATES.map((s) => [s, 0])) as TargetCounts;
}

// ---- releases ---------------------------------------------------------------------

export interface ReleaseRecord {
  id: number;
  version: string;
  arch: string;
  bytes: number;
  sha256: string;
  /** The signed manifest (compact JWS). */
  manifest: string;
  /** The release's directory (absolute). */
  dir: string;
  addedAt: number;
  removedAt: number | null;
}

/**
 * How long after an upgrade command's own expiry the chunk server still serves
 * its artifact to the board while the command is unanswered: the board took
 * the command before it expired and may still be downloading (it gives up
 * after 10 minutes without progress, E_UPGRADE_DOWNLOAD, and acks).
 */
export const UPGRADE_FETCH_GRACE_MS = 6 * 3600 * 1000;

// ---- enrollment tokens ------------------------------------------------------------

export type TokenStatus = 'valid' | 'used' | 'expired' | 'revoked';

export interface TokenListing {
  /** The token's id (the first 16 hex digits of its stored SHA-256: names it for revocation, reveals nothing of its text). */
  id: string;
  deviceId: string;
  userId: string;
  createdAt: number;
  expiresAt: number;
  usedAt: number | null;
  /** When an operator revoked it (it can no longer be used), null if never. */
  revokedAt: number | null;
  status: TokenStatus;
  /** When the device enrolled (with this token or another), null if it never did. */
  enrolledAt: number | null;
  /** The device's registry state, null when it is not registered (bundled without --keys-on-host, not enrolled yet). */
  deviceState: string | null;
}

// ---- audit ------------------------------------------------------------------------

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

export type { PlanSummary } from '../rollouts/plan.js';
