/**
 * The server's storage interface: everything `serve`, `send`, the HTTP API, the
 * rollout engine and the operator commands keep, split by concern, every call
 * asynchronous. Two implementations: SQLite (server/storage/sqlite/, the
 * embedded default, one file in the data directory) and PostgreSQL
 * (server/storage/postgres/, several server machines sharing one fleet).
 *
 * Rules every implementation keeps (the shared suite test/storage/ checks them
 * on both):
 * - Each method that changes more than one row is one transaction; nothing is
 *   read on one round trip and written on the next on a decision another
 *   process could race (seq allocation, token use, claims, the lease and ack
 *   recording are single conditional statements or row-locked transactions).
 * - Errors are RegistryError (server/storage/errors.ts) with the codes the
 *   SQLite registry has always thrown (E_NO_DEVICE, E_TOKEN, E_DECOMMISSIONED,
 *   E_NO_KEY, E_NO_ROLLOUT, E_ROLLOUT_STATE, E_BAD_TAG, ...).
 * - Times are milliseconds since the epoch, from `now()` (tests inject a clock).
 */
import type { AckClaims, PublicJwk, ReleaseManifest, ReportClaims } from '../../protocol/index.js';
import type {
  AckRecordOutcome,
  AuditFilter,
  AuditRecord,
  CommandRecord,
  DeviceRecord,
  DeviceState,
  Lease,
  NewCommand,
  NewDevice,
  PlanSummary,
  ReleaseRecord,
  ReportRecordOutcome,
  RolloutRecord,
  RolloutSelector,
  RolloutSpec,
  RolloutState,
  TargetCounts,
  TargetRecord,
  TargetState,
  TokenListing,
} from './records.js';
import type { RegistryError } from './errors.js';
import type { ChainedEntry, ChainHead, ChainVerification } from './audit-chain.js';
import type { CheckpointRecord } from '../audit/checkpoint.js';
import type { NewOperator, OperatorPrincipal, OperatorRecord, OperatorRole, OperatorTokenRecord, SessionLimits } from './operator-records.js';

/** Which implementation, and where (a path, or a URL with its password removed). */
export interface StorageInfo {
  kind: 'sqlite' | 'postgres';
  location: string;
}

export interface Storage {
  readonly info: StorageInfo;
  /** The storage's clock (ms since the epoch); tests inject one. */
  now(): number;
  readonly devices: DeviceStore;
  readonly enrollment: EnrollmentStore;
  readonly seq: SeqStore;
  readonly commands: CommandStore;
  readonly rollouts: RolloutStore;
  readonly leases: LeaseStore;
  readonly audit: AuditStore;
  readonly releases: ReleaseStore;
  readonly operators: OperatorStore;
  /** False once close() was called: late callbacks (timers, in-flight handlers) check it and do nothing. */
  readonly open: boolean;
  close(): Promise<void>;
}

// ---- devices and tags ---------------------------------------------------------

export interface DeviceListFilter {
  userId?: string;
  states?: readonly DeviceState[];
  tag?: string;
}

/** How GET /devices sorts: by id, user id, last seen, agent version, or presence (online, offline, never reported). */
export const DEVICE_SORTS = ['id', 'user', 'last_seen', 'version', 'status'] as const;
export type DeviceSort = (typeof DEVICE_SORTS)[number];

/** One page of the fleet (the console's fleet table), filtered, sorted and counted inside the database. */
export interface DevicePageQuery {
  /** Substring of the id or the user id, case-insensitive (ASCII). */
  q?: string;
  /** Carries this tag (E_BAD_TAG for one that is not a tag). */
  tag?: string;
  userId?: string;
  /** Online now by its reports (server/core/presence.ts), or not (offline, or never reported). */
  online?: boolean;
  /** Runs exactly this agent version; null: the version is unknown. */
  version?: string | null;
  /** Has a security flag set, or not. */
  flagged?: boolean;
  /** Default id; ties by id (the same direction). Nulls (never seen, unknown version, no user) last either way. */
  sort?: DeviceSort;
  dir?: 'asc' | 'desc';
  offset?: number;
  /** Absent: every matching device. */
  limit?: number;
  /** The clock `online` is judged by. */
  now: number;
}

export interface DevicePageItem {
  device: DeviceRecord;
  /** Its newest command (by creation), null when none. */
  lastCommand: CommandRecord | null;
}

/** A device's presence change (device_presence), as its signed reports told it. */
export interface PresenceChange {
  id: number;
  deviceId: string;
  at: number;
  presence: 'online' | 'offline';
  /** connect / interval (online), offline (its will or clean stop), timeout (no report within the grace, seen when the next one came). */
  reason: string;
  session: string | null;
  conn: number | null;
}

export interface DeviceStore {
  get(id: string): Promise<DeviceRecord | undefined>;
  /** A page of devices matching `query` and how many match in all (`total`), each with its last command; all done in the database. */
  page(query: DevicePageQuery): Promise<{ total: number; items: DevicePageItem[] }>;
  /** The device's presence changes, newest first (at most `limit`, default 100); E_NO_DEVICE when it is not registered. */
  presenceHistory(deviceId: string, limit?: number): Promise<PresenceChange[]>;
  /**
   * Adds and removes tags on many devices in ONE transaction, audited once per device changed
   * (device.tag.add / device.tag.remove with `by`). E_NO_DEVICE naming every unknown device, E_BAD_TAG: nothing changed then.
   */
  bulkTags(deviceIds: readonly string[], add: readonly string[], remove: readonly string[], by: string): Promise<{ deviceId: string; tags: string[] }[]>;
  /** E_NO_DEVICE when absent. */
  require(id: string): Promise<DeviceRecord>;
  list(filter?: DeviceListFilter): Promise<DeviceRecord[]>;
  /** Registers (or with replace, re-registers: flag cleared) a device with its keys; audited. */
  add(input: NewDevice, options?: { replace?: boolean }): Promise<DeviceRecord>;
  /** Removes the device and everything of it; audited. E_NO_DEVICE when absent. */
  remove(id: string): Promise<void>;
  /** Adds tags (E_BAD_TAG for one that is not a tag; nothing added then); returns the device's tags. */
  /** `by`: who (the audit row's detail names them). */
  addTags(deviceId: string, tags: readonly string[], by?: string): Promise<string[]>;
  removeTags(deviceId: string, tags: readonly string[], by?: string): Promise<string[]>;
  tagsOf(deviceId: string): Promise<string[]>;
  listTags(): Promise<{ tag: string; devices: number }[]>;
  /** Records a verified report (presence, reported state, arch/version) unless stale or a duplicate. */
  /** `signed`: the report's inner JWS as the board signed it, kept in the audit row of a report that changes the agent version (`device.version.reported`). */
  recordReport(deviceId: string, claims: ReportClaims, signed?: string): Promise<ReportRecordOutcome>;
  /** Signing keys that verify its acks: current, and previous within the grace after a rotate. */
  verificationKeys(id: string): Promise<PublicJwk[]>;
  /** Signing keys that verify its reports. */
  reportVerificationKeys(id: string): Promise<PublicJwk[]>;
}

// ---- tokens and enrollment ----------------------------------------------------

export interface EnrollInput {
  deviceId: string;
  token: string;
  enrollmentJti: string;
  signing: PublicJwk;
  encryption: PublicJwk;
}

export interface EnrollmentStore {
  /** A new one-time token for the device (its hash stored, the text returned once); audited token.create (with `by` when given). */
  createToken(deviceId: string, userId: string, ttlMs: number, by?: string): Promise<{ token: string; expiresAt: number; id: string }>;
  /**
   * Revokes an unused token by its id (TokenListing.id): enroll refuses it from then on (E_TOKEN_REVOKED).
   * E_NO_TOKEN (unknown or already revoked), E_TOKEN_USED. Audited token.revoke with `by`.
   */
  revokeToken(id: string, by: string): Promise<TokenListing>;
  /** Consumes the token and registers the keys, atomically; a repeat of the same enrollment is `repeated`. E_TOKEN otherwise. */
  enroll(input: EnrollInput): Promise<{ userId: string; repeated: boolean }>;
  listTokens(filter?: { deviceId?: string }): Promise<TokenListing[]>;
  /** Devices with a token issued and no enrollment accepted (their newest token not revoked). */
  pendingEnrollments(): Promise<TokenListing[]>;
}

// ---- seq ----------------------------------------------------------------------

export interface SeqStore {
  /** The device's next command seq, taken atomically (never handed out twice, on any machine). E_NO_DEVICE, E_DECOMMISSIONED, E_NO_KEY. */
  allocate(deviceId: string): Promise<{ seq: number; device: DeviceRecord }>;
  /** One seq per id in one transaction; a device that cannot have one gets its error in place. */
  allocateMany(deviceIds: readonly string[]): Promise<({ seq: number; device: DeviceRecord } | RegistryError)[]>;
}

// ---- commands, acks and deliveries ---------------------------------------------

/**
 * What an applied ack does to the registry, as the server's per-action table
 * tells it for the command (server/core/actions/table.ts): the caller builds the list from
 * the command (its action, bindUser, releaseSha256) and the ack; the storage
 * applies it in the ack's own transaction, only when the ack is recorded now
 * with status `applied` (never for a duplicate or a contradiction).
 */
export type AckEffect =
  /** The device is bound to this user (a command with bindUser). */
  | { kind: 'bind-user'; userId: string }
  /** The device is provisioned (confirmed), unless decommissioned; audited device.provisioned with user_id. */
  | { kind: 'provisioned'; userId: string }
  /** These keys become current, the replaced ones previous; audited device.rotate. (In a contradiction: only named in its audit row.) */
  | { kind: 'keys-rotated'; signing: PublicJwk; encryption: PublicJwk }
  /** Decommissioned, every key retired; audited device.decommissioned. */
  | { kind: 'decommissioned' }
  /** Runs this agent version (null: unknown); arch from the release with the command's releaseSha256 (when any); audited device.upgraded. */
  | { kind: 'upgraded'; version: string | null };

export interface CommandListFilter {
  deviceId?: string;
  fanoutId?: string;
  limit?: number;
}

export interface CommandStore {
  /** Records a sealed command (audited command.create). */
  record(c: NewCommand): Promise<void>;
  /** Records many in one transaction (group commit): one result per input, an Error for one that failed alone. */
  recordMany(cs: readonly NewCommand[]): Promise<(true | Error)[]>;
  markSent(jti: string): Promise<void>;
  markSentMany(jtis: readonly string[]): Promise<void>;
  get(jti: string): Promise<CommandRecord | undefined>;
  /** The sealed JWE as published (re-publishing). */
  sealed(jti: string): Promise<string | undefined>;
  /** Newest first. */
  list(filter?: CommandListFilter): Promise<CommandRecord[]>;
  /**
   * Records a verified ack once (a duplicate changes nothing; a contradiction is
   * audited and flags the device, effects not applied), and for an `applied`
   * one recorded now applies `effects` in the same transaction.
   */
  /** `signed`: the ack's inner JWS exactly as the board signed it, kept in the audit row (`ack_jws`) for `audit verify`. */
  recordAck(deviceId: string, ack: AckClaims, effects: readonly AckEffect[], signed?: string): Promise<AckRecordOutcome>;
}

// ---- rollouts and the engine lease ---------------------------------------------

export interface TargetMoveFields {
  jti?: string | null;
  code?: string | null;
  sent?: boolean;
  attempt?: boolean;
  nextAt?: number | null;
  lease?: Lease;
}

export interface CreateFromSelectorOptions {
  needsDeviceUser: boolean;
  chunk?: number;
  retryOf?: { id: string; inFlightLeftOut: number; removedLeftOut?: number };
  /** At most this many targets (what a destructive action was confirmed for): more now cancels the rollout before release, E_CONFIRM. */
  maxTargets?: number;
  /** Who started it (its rollout.create and rollout.retry audit rows name them as `by`). */
  by?: string;
}

export interface RolloutStore {
  create(spec: RolloutSpec, deviceIds: readonly string[]): Promise<RolloutRecord>;
  /** Targets resolved inside the database, in chunks, never the fleet's ids in memory (server/storage/sqlite/rollouts.ts). */
  createFromSelector(spec: RolloutSpec, options: CreateFromSelectorOptions): Promise<RolloutRecord>;
  get(id: string): Promise<RolloutRecord | undefined>;
  /** E_NO_ROLLOUT when absent. */
  require(id: string): Promise<RolloutRecord>;
  list(options?: { limit?: number; unfinished?: boolean }): Promise<RolloutRecord[]>;
  counts(id: string): Promise<TargetCounts>;
  targets(id: string, options?: { states?: readonly TargetState[]; limit?: number }): Promise<TargetRecord[]>;
  deliverable(id: string, now: number, limit: number): Promise<TargetRecord[]>;
  pendingBreakdown(id: string, now: number): Promise<{ deliverable: number; backoff: number; offline: number; backoffUntil: number | null }>;
  move(id: string, deviceId: string, from: readonly TargetState[], to: TargetState, fields?: TargetMoveFields): Promise<boolean>;
  claim(id: string, deviceId: string, lease: Lease): Promise<boolean>;
  markSent(id: string, deviceId: string, jti: string, lease: Lease): Promise<'sent' | 'fenced' | 'stopped'>;
  reclaimSending(id: string, lease: Lease): Promise<{ adopted: number; requeued: number }>;
  unansweredValid(id: string, now: number): Promise<{ deviceId: string; jti: string }[]>;
  answered(
    id: string,
  ): Promise<{ deviceId: string; jti: string; status: 'applied' | 'rejected' | 'failed' | 'rolled_back'; code: string | null; attempts: number }[]>;
  inFlight(id: string, now: number): Promise<number>;
  unansweredExpired(deviceId: string, now: number): Promise<{ rolloutId: string; jti: string }[]>;
  pendingFor(deviceId: string): Promise<string[]>;
  expireAll(id: string): Promise<number>;
  cancelPending(id: string, code: string): Promise<number>;
  finishInterruptedPlanning(id: string): Promise<string | undefined>;
  setState(id: string, from: readonly RolloutState[], to: RolloutState, reason: string, by: string): Promise<RolloutRecord>;
  finish(id: string, state: RolloutState, reason: string): Promise<void>;
  /** The plan's counts of what a selector matches, by presence (server/rollouts/plan.ts); E_NO_DEVICE naming every unknown named device. */
  summarize(selector: RolloutSelector, needsDeviceUser: boolean, now: number): Promise<PlanSummary>;
  /** The first `limit` device ids a selector matches: named devices in their order, the others by id. */
  sampleIds(selector: RolloutSelector, limit: number): Promise<string[]>;
  /** Targets of `id` in `states` whose device was removed from the registry since. */
  removedTargets(id: string, states: readonly TargetState[]): Promise<number>;
  /** When the rollout last sent a command (null: never). */
  lastSentAt(id: string): Promise<number | null>;
}

export interface LeaseStore {
  /** Takes (or renews, for its live holder) the named lease; undefined while another holds it. A new holder gets a higher generation. */
  take(name: string, holder: string, ttlMs: number): Promise<Lease | undefined>;
  renew(lease: Lease): Promise<boolean>;
  /** Lets it lapse now (the generation stays). */
  release(name: string, holder: string): Promise<void>;
  holder(name: string): Promise<string | undefined>;
}

// ---- audit --------------------------------------------------------------------

export interface AuditStore {
  append(event: string, deviceId: string | null, detail?: Record<string, unknown>): Promise<void>;
  /** The newest `limit` rows (default 100), of one device or all, oldest first. */
  log(options?: { deviceId?: string; limit?: number }): Promise<AuditRecord[]>;
  /** The newest `limit` rows matching the filter, oldest first (server/storage/sqlite/audit.ts). */
  query(filter: AuditFilter): Promise<AuditRecord[]>;
  /** The id of the newest row (0: none). */
  lastId(): Promise<number>;
  /** Rows with afterId < id <= upTo whose event starts with `prefix` (e.g. `rollout.`), oldest first, at most `limit`. */
  eventsSince(afterId: number, upTo: number, prefix: string, limit: number): Promise<AuditRecord[]>;
  /**
   * Checks the hash chain (server/storage/audit-chain.ts) of the rows with
   * from <= id <= to (default: all; the first chained after the stored hash of
   * the row before it); with no `to`, also that the head is the last row.
   * Names the first row that breaks it.
   */
  verifyChain(from?: number, to?: number): Promise<ChainVerification>;
  /** The chain's head: the last entry's id and hash (0 and AUDIT_GENESIS: none). */
  head(): Promise<ChainHead>;
  /** Up to `limit` entries with id > afterId, in id order, with their chain columns (a detail that is not JSON: `malformed`). */
  entries(afterId: number, limit: number): Promise<ChainedEntry[]>;
  /** Stores a signed checkpoint of the head (server/audit/checkpoint.ts); returns it with its id. */
  addCheckpoint(c: Omit<CheckpointRecord, 'id'>): Promise<CheckpointRecord>;
  /** Every checkpoint, oldest first. */
  checkpoints(): Promise<CheckpointRecord[]>;
  /** Every signing key ever registered for each of these devices (current, previous and retired: old acks stay verifiable). */
  deviceSigningKeys(deviceIds: readonly string[]): Promise<Map<string, PublicJwk[]>>;
  /** The devices of the entries with id <= upTo whose event is one of `events` (those with board-signed rows). */
  devicesWithEvents(events: readonly string[], upTo: number): Promise<string[]>;
}

// ---- releases -----------------------------------------------------------------

/** One file of a release's directory (artifact.tar.gz, index.bin, manifest.jws, manifest.json) as the registry keeps it. */
export interface ReleaseFile {
  name: string;
  bytes: Buffer;
}

export interface ReleaseStore {
  /**
   * Whether the registry keeps the releases' files for every machine sharing it
   * (PostgreSQL: table release_files). false (SQLite): one machine, the files
   * are in its data directory only; putFiles does nothing and files() is undefined.
   */
  readonly keepsFiles: boolean;
  list(filter?: { version?: string }): Promise<ReleaseRecord[]>;
  get(version: string, arch: string): Promise<ReleaseRecord | undefined>;
  bySha256(sha256: string): Promise<ReleaseRecord | undefined>;
  require(version: string, arch?: string): Promise<ReleaseRecord>;
  /** Records the release; with keepsFiles, `files` are stored in the same transaction as the row (none: none stored). */
  add(m: ReleaseManifest, manifestJws: string, dir: string, files?: readonly ReleaseFile[]): Promise<ReleaseRecord>;
  /** Stores (replaces) the files of the live release `releaseId` (E_NO_RELEASE when it is not live). No-op without keepsFiles. */
  putFiles(releaseId: number, files: readonly ReleaseFile[]): Promise<void>;
  /** The stored files of the live release with this artifact, by name; undefined when none are stored (always, without keepsFiles). */
  files(sha256: string): Promise<ReleaseFile[] | undefined>;
  /** What still needs the release (an unfinished rollout, an unanswered command), as text; undefined: nothing. */
  inUse(r: ReleaseRecord): Promise<string | undefined>;
  markRemoved(r: ReleaseRecord): Promise<void>;
  /** Whether the device has an unanswered upgrade command naming this artifact (the chunk server serves only then). */
  upgradeInFlight(deviceId: string, sha256: string): Promise<boolean>;
}

// ---- operator accounts, API tokens and console sessions ------------------------

/**
 * Operator accounts (server/storage/operator-records.ts). Every change is one
 * transaction with its audit row (`operator.*`, `session.*`), whose detail names
 * the operator changed (`operator`) and who did it (`by`: an operator's name,
 * or `cli:USER@HOST` for the command line). Secrets (token, session id) are
 * returned once and stored as SHA-256 only. At least one enabled admin is kept
 * once there is one (E_LAST_ADMIN), race-free: the admins' rows are locked.
 */
export interface OperatorStore {
  /** E_BAD_OPERATOR (name, role, hash), E_OPERATOR_EXISTS. Audited operator.add. */
  add(input: NewOperator, by: string): Promise<OperatorRecord>;
  get(name: string): Promise<OperatorRecord | undefined>;
  /** By name. */
  list(): Promise<OperatorRecord[]>;
  /** The encoded password hash (login); undefined for an unknown operator. */
  passwordHash(name: string): Promise<string | undefined>;
  /** Replaces the hash and ends the operator's sessions. E_NO_OPERATOR. Audited operator.passwd. */
  setPassword(name: string, passwordHash: string, by: string): Promise<void>;
  /** E_NO_OPERATOR, E_LAST_ADMIN (demoting the last enabled admin). Audited operator.role. */
  setRole(name: string, role: OperatorRole, by: string): Promise<OperatorRecord>;
  /** Disables (ends its sessions; its tokens are refused while disabled) or enables. E_NO_OPERATOR, E_LAST_ADMIN. Audited operator.disable/enable. */
  setDisabled(name: string, disabled: boolean, by: string): Promise<OperatorRecord>;
  /** Removes it with its tokens and sessions. E_NO_OPERATOR, E_LAST_ADMIN. Audited operator.remove. */
  remove(name: string, by: string): Promise<void>;

  /** A new API token for the operator (its SHA-256 stored; the text returned once). E_NO_OPERATOR. Audited operator.token.create. */
  createToken(name: string, label: string, ttlMs: number | null, by: string): Promise<{ token: string; record: OperatorTokenRecord }>;
  /** Every token (or one operator's), newest first; never their text. */
  listTokens(filter?: { operator?: string }): Promise<OperatorTokenRecord[]>;
  /** E_NO_OPERATOR_TOKEN (unknown or already revoked). Audited operator.token.revoke. */
  revokeToken(id: string, by: string): Promise<void>;
  /** Who the token authenticates (unrevoked, unexpired, operator enabled), recording its use; undefined otherwise. */
  authenticateToken(token: string): Promise<OperatorPrincipal | undefined>;

  /** A new console session (login). E_NO_OPERATOR (unknown or disabled). Audited session.create. */
  createSession(name: string, limits: SessionLimits): Promise<{ session: string; expiresAt: number }>;
  /** Who the live session is, moving its idle deadline; undefined (and the session deleted) when it has ended or its operator is disabled. */
  touchSession(session: string): Promise<OperatorPrincipal | undefined>;
  /** Who the live session is, WITHOUT moving its idle deadline (a live event stream checks it each tick); undefined when it has ended. */
  peekSession(session: string): Promise<OperatorPrincipal | undefined>;
  /** Ends it (logout); false when there was none. Audited session.end. */
  endSession(session: string): Promise<boolean>;
}
