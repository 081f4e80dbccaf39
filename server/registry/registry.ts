/**
 * The device registry: SQLite (better-sqlite3, WAL) shared by `serve`, `send`
 * and the other CLI commands, each through its own connection. Every change
 * that must be atomic (token consumption, seq allocation, ack recording and its
 * effects) is one IMMEDIATE transaction, so concurrent processes never interleave.
 */
import { existsSync } from 'node:fs';
import Database from 'better-sqlite3';
import { compareReportPositions, reportPosition, type AckClaims, type PublicJwk, type ReportClaims } from '../../protocol/index.js';
import { RegistryError } from './errors.js';
import type { AckEffect } from '../storage/types.js';
import { migrate } from './schema.js';
import { ACK_CONTRADICTION_EVENT, PREVIOUS_KEY_GRACE_MS, TAG_PATTERN, ackContradicts, assertTag, deviceFlag, nextReportedState } from '../storage/rules.js';
export { ACK_CONTRADICTION_EVENT, PREVIOUS_KEY_GRACE_MS, TAG_PATTERN, ackContradicts, assertTag };
import { hashToken, newEnrollmentToken } from './tokens.js';
import type { AuditRecord, CommandRecord, DeviceKeyRecord, DeviceOrigin, DeviceRecord, DeviceState, ReportedState } from './types.js';

interface DeviceRow {
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

interface KeyRow {
  device_id: string;
  kid: string;
  use: 'sig' | 'enc';
  jwk: string;
  status: 'current' | 'previous' | 'retired';
  added_at: number;
  retired_at: number | null;
}

interface CommandRow {
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

interface TokenRow {
  hash: string;
  device_id: string;
  user_id: string;
  created_at: number;
  expires_at: number;
  used_at: number | null;
  used_by: string | null;
}

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

export class Registry {
  readonly db: Database.Database;
  readonly path: string;
  readonly #now: () => number;

  private constructor(db: Database.Database, path: string, now: () => number) {
    this.db = db;
    this.path = path;
    this.#now = now;
  }

  /** Opens (and with `create`, creates) the registry and applies pending migrations. */
  static open(path: string, options: { create?: boolean; now?: () => number } = {}): Registry {
    if (!options.create && path !== ':memory:' && !existsSync(path)) {
      throw new RegistryError('E_NO_REGISTRY', `registry ${path} does not exist; run: provision-server init --data DIR`);
    }
    const db = new Database(path);
    try {
      db.pragma('journal_mode = WAL');
      db.pragma('busy_timeout = 10000');
      db.pragma('foreign_keys = ON');
      db.pragma('synchronous = FULL');
      migrate(db);
    } catch (err) {
      db.close();
      throw err;
    }
    return new Registry(db, path, options.now ?? Date.now);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  now(): number {
    return this.#now();
  }

  // ---- audit ---------------------------------------------------------------

  audit(event: string, deviceId: string | null, detail: Record<string, unknown> = {}): void {
    this.db.prepare('INSERT INTO audit (at, event, device_id, detail) VALUES (?, ?, ?, ?)').run(this.#now(), event, deviceId, JSON.stringify(detail));
  }

  auditLog(options: { deviceId?: string; limit?: number } = {}): AuditRecord[] {
    const rows = (
      options.deviceId === undefined
        ? this.db.prepare('SELECT * FROM audit ORDER BY id DESC LIMIT ?').all(options.limit ?? 100)
        : this.db.prepare('SELECT * FROM audit WHERE device_id = ? ORDER BY id DESC LIMIT ?').all(options.deviceId, options.limit ?? 100)
    ) as { id: number; at: number; event: string; device_id: string | null; detail: string }[];
    return rows.reverse().map((r) => ({ id: r.id, at: r.at, event: r.event, deviceId: r.device_id, detail: JSON.parse(r.detail) as Record<string, unknown> }));
  }

  // ---- devices -------------------------------------------------------------

  getDevice(id: string): DeviceRecord | undefined {
    const row = this.db.prepare('SELECT * FROM devices WHERE id = ?').get(id) as DeviceRow | undefined;
    return row ? this.#device(row) : undefined;
  }

  requireDevice(id: string): DeviceRecord {
    const d = this.getDevice(id);
    if (!d) throw new RegistryError('E_NO_DEVICE', `device ${id} is not registered`);
    return d;
  }

  listDevices(filter: { userId?: string; states?: readonly DeviceState[]; tag?: string } = {}): DeviceRecord[] {
    const where: string[] = [];
    const args: string[] = [];
    if (filter.userId !== undefined) {
      where.push('user_id = ?');
      args.push(filter.userId);
    }
    if (filter.tag !== undefined) {
      // A tag no device can carry is a typo, not an empty selection (send --tag, GET /devices?tag=).
      assertTag(filter.tag);
      where.push('id IN (SELECT device_id FROM device_tags WHERE tag = ?)');
      args.push(filter.tag);
    }
    const rows = this.db.prepare(`SELECT * FROM devices ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id`).all(...args) as DeviceRow[];
    return rows.filter((r) => !filter.states || filter.states.includes(r.state)).map((r) => this.#device(r));
  }

  // ---- tags ------------------------------------------------------------------

  /** Adds tags to a device (already present: unchanged); returns its tags. */
  addTags(deviceId: string, tags: readonly string[]): string[] {
    for (const t of tags) assertTag(t);
    this.db
      .transaction(() => {
        this.requireDevice(deviceId);
        const insert = this.db.prepare('INSERT INTO device_tags (device_id, tag, added_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING');
        const added = tags.filter((t) => insert.run(deviceId, t, this.#now()).changes === 1);
        if (added.length) this.audit('device.tag.add', deviceId, { tags: added });
      })
      .immediate();
    return this.tagsOf(deviceId);
  }

  /** Removes tags from a device (absent: unchanged); returns its tags. */
  removeTags(deviceId: string, tags: readonly string[]): string[] {
    for (const t of tags) assertTag(t);
    this.db
      .transaction(() => {
        this.requireDevice(deviceId);
        const del = this.db.prepare('DELETE FROM device_tags WHERE device_id = ? AND tag = ?');
        const removed = tags.filter((t) => del.run(deviceId, t).changes === 1);
        if (removed.length) this.audit('device.tag.remove', deviceId, { tags: removed });
      })
      .immediate();
    return this.tagsOf(deviceId);
  }

  tagsOf(deviceId: string): string[] {
    return (this.db.prepare('SELECT tag FROM device_tags WHERE device_id = ? ORDER BY tag').all(deviceId) as { tag: string }[]).map((r) => r.tag);
  }

  /** Every tag in use and how many devices carry it. */
  listTags(): { tag: string; devices: number }[] {
    return this.db.prepare('SELECT tag, COUNT(*) AS devices FROM device_tags GROUP BY tag ORDER BY tag').all() as { tag: string; devices: number }[];
  }

  // ---- presence ---------------------------------------------------------------

  /**
   * Records a verified report (see protocol/report.ts) if it is newer than
   * the newest one recorded for the device: by its position (run, conn, n),
   * or, for a legacy report without one (an older agent), only while the
   * device has never sent a report with a position, and an `offline` one only
   * for the session and connection the registry holds. A report that is not
   * newer changes nothing (a replay, a late will). `connect` and `interval`
   * make the device online, `offline` offline. The reported `last_seq` and
   * what commands change (settings digest, key ids, self-test) never move
   * back: a report whose `last_seq` is below the recorded one (a will sealed
   * before its connection's commands) only changes presence. Last-seen is the
   * server's receive time.
   */
  recordReport(deviceId: string, claims: ReportClaims): ReportRecordOutcome {
    return this.db
      .transaction((): ReportRecordOutcome => {
        const row = this.db.prepare('SELECT * FROM devices WHERE id = ?').get(deviceId) as DeviceRow | undefined;
        if (!row) throw new RegistryError('E_NO_DEVICE', `device ${deviceId} is not registered`);
        if (row.last_report_jti === claims.jti) return { kind: 'duplicate' };
        const position = reportPosition(claims);
        if (position) {
          const recorded =
            row.report_run === null || row.report_n === null || row.presence_conn === null
              ? undefined
              : { run: row.report_run, conn: row.presence_conn, rank: row.report_n };
          if (recorded && compareReportPositions(position, recorded) <= 0) return { kind: 'stale' };
        } else {
          if (row.report_run !== null) return { kind: 'stale' };
          if (claims.reason === 'offline' && (row.presence_session !== claims.session || row.presence_conn !== claims.conn)) return { kind: 'stale' };
        }
        const now = this.#now();
        const state = JSON.stringify(nextReportedState(row.reported === null ? null : (JSON.parse(row.reported) as ReportedState), claims));
        const run = position?.run ?? null;
        const rank = position?.rank ?? null;
        if (claims.reason === 'offline') {
          this.db
            .prepare(
              `UPDATE devices SET presence = 'offline', presence_session = ?, presence_conn = ?, report_run = ?, report_n = ?,
                 reported = ?, reported_at = ?, last_report_jti = ? WHERE id = ?`,
            )
            .run(claims.session, claims.conn, run, rank, state, now, claims.jti, deviceId);
          return { kind: 'recorded', presence: 'offline' };
        }
        this.db
          .prepare(
            `UPDATE devices SET presence = 'online', last_seen_at = ?, presence_session = ?, presence_conn = ?, report_run = ?, report_n = ?,
               report_interval_s = ?, reported = ?, reported_at = ?, last_report_jti = ? WHERE id = ?`,
          )
          .run(now, claims.session, claims.conn, run, rank, claims.interval_s, state, now, claims.jti, deviceId);
        this.db.prepare('UPDATE devices SET agent_version = ?, arch = COALESCE(?, arch) WHERE id = ?').run(claims.agent_version, claims.arch ?? null, deviceId);
        return { kind: 'recorded', presence: 'online' };
      })
      .immediate();
  }

  /** Registers a device whose keys were made elsewhere (JWKS, legacy import, keys made on the host). */
  addDevice(input: NewDevice, options: { replace?: boolean } = {}): DeviceRecord {
    this.db
      .transaction(() => {
        const existing = this.db.prepare('SELECT state FROM devices WHERE id = ?').get(input.id) as { state: DeviceState } | undefined;
        if (existing && !options.replace) {
          throw new RegistryError('E_DEVICE_EXISTS', `device ${input.id} is already registered (${existing.state}); remove it first or pass --replace`);
        }
        this.#upsertDevice(input.id, input.userId, input.state ?? 'registered', input.origin);
        this.#setCurrentKeys(input.id, input.signing, input.encryption);
        this.audit('device.add', input.id, {
          origin: input.origin,
          user_id: input.userId,
          signing_kid: input.signing?.kid ?? null,
          encryption_kid: input.encryption.kid,
        });
      })
      .immediate();
    return this.requireDevice(input.id);
  }

  /** Deletes a device, its keys and its unused tokens (its command history and the audit log stay). */
  removeDevice(id: string): void {
    this.db
      .transaction(() => {
        this.requireDevice(id);
        this.db.prepare('DELETE FROM devices WHERE id = ?').run(id);
        this.db.prepare('DELETE FROM enrollment_tokens WHERE device_id = ? AND used_at IS NULL').run(id);
        this.audit('device.remove', id);
      })
      .immediate();
  }

  /**
   * Signing keys that may verify this device's acks: the current one, and one
   * replaced (rotate) or retired (delete) less than PREVIOUS_KEY_GRACE_MS ago,
   * so that an ack in flight, or one handled by a second process, still verifies.
   */
  verificationKeys(id: string): PublicJwk[] {
    const cutoff = this.#now() - PREVIOUS_KEY_GRACE_MS;
    const rows = this.db
      .prepare("SELECT jwk FROM device_keys WHERE device_id = ? AND use = 'sig' AND (status = 'current' OR retired_at >= ?)")
      .all(id, cutoff) as { jwk: string }[];
    return rows.map((r) => JSON.parse(r.jwk) as PublicJwk);
  }

  /**
   * Signing keys that may verify this device's reports: those of
   * verificationKeys, less keys of an earlier enrollment (a board enrolled
   * again with new keys starts its report positions afresh, so a report of
   * its old identity must not verify during the grace period).
   */
  reportVerificationKeys(id: string): PublicJwk[] {
    const cutoff = this.#now() - PREVIOUS_KEY_GRACE_MS;
    const rows = this.db
      .prepare(
        `SELECT k.jwk FROM device_keys k JOIN devices d ON d.id = k.device_id
         WHERE k.device_id = ? AND k.use = 'sig' AND (k.status = 'current' OR (k.retired_at >= ? AND k.added_at >= COALESCE(d.enrolled_at, 0)))`,
      )
      .all(id, cutoff) as { jwk: string }[];
    return rows.map((r) => JSON.parse(r.jwk) as PublicJwk);
  }

  // ---- enrollment tokens ---------------------------------------------------

  /** Creates a one-time token bound to a device and a user; returns the token text, which is never stored. */
  createToken(deviceId: string, userId: string, ttlMs: number): { token: string; expiresAt: number } {
    const token = newEnrollmentToken();
    const now = this.#now();
    const expiresAt = now + ttlMs;
    this.db
      .transaction(() => {
        this.db
          .prepare('INSERT INTO enrollment_tokens (hash, device_id, user_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)')
          .run(hashToken(token), deviceId, userId, now, expiresAt);
        this.audit('token.create', deviceId, { user_id: userId, expires_at: expiresAt });
      })
      .immediate();
    return { token, expiresAt };
  }

  /**
   * Accepts an enrollment: checks and consumes the token (bound to `deviceId`),
   * registers the keys as the device's current ones and marks it enrolling,
   * all in one transaction. Returns the user the token binds.
   */
  enroll(input: { deviceId: string; token: string; enrollmentJti: string; signing: PublicJwk; encryption: PublicJwk }): { userId: string; repeated: boolean } {
    return this.db
      .transaction(() => {
        const now = this.#now();
        const row = this.db.prepare('SELECT * FROM enrollment_tokens WHERE hash = ?').get(hashToken(input.token)) as TokenRow | undefined;
        if (!row) throw new RegistryError('E_TOKEN_INVALID', 'the enrollment token is unknown');
        if (row.used_at !== null) {
          // The same device repeating its enrollment (it missed our `request`) with the same keys: answer again, change nothing.
          const device = this.getDevice(input.deviceId);
          if (
            row.device_id === input.deviceId &&
            device?.state === 'enrolling' &&
            device.signing?.kid === input.signing.kid &&
            device.encryption?.kid === input.encryption.kid
          ) {
            this.audit('device.enroll.repeat', input.deviceId, { enrollment_jti: input.enrollmentJti });
            return { userId: row.user_id, repeated: true };
          }
          throw new RegistryError('E_TOKEN_USED', `the enrollment token was already used (${new Date(row.used_at).toISOString()})`);
        }
        if (row.expires_at <= now) throw new RegistryError('E_TOKEN_EXPIRED', `the enrollment token expired at ${new Date(row.expires_at).toISOString()}`);
        if (row.device_id !== input.deviceId)
          throw new RegistryError('E_TOKEN_DEVICE', `the enrollment token is bound to another device, not ${input.deviceId}`);
        const consumed = this.db
          .prepare('UPDATE enrollment_tokens SET used_at = ?, used_by = ? WHERE hash = ? AND used_at IS NULL AND expires_at > ?')
          .run(now, input.enrollmentJti, row.hash, now);
        if (consumed.changes !== 1) throw new RegistryError('E_TOKEN_USED', 'the enrollment token was already used');
        const signingBefore = this.db.prepare("SELECT kid FROM device_keys WHERE device_id = ? AND use = 'sig' AND status = 'current'").get(input.deviceId) as
          { kid: string } | undefined;
        this.#upsertDevice(input.deviceId, row.user_id, 'enrolling', 'enrollment');
        this.db.prepare('UPDATE devices SET enrolled_at = ?, decommissioned_at = NULL WHERE id = ?').run(now, input.deviceId);
        // New keys are a new identity, whose agent counts its report positions afresh (and its seq from 0).
        if (signingBefore?.kid !== input.signing.kid) {
          this.db
            .prepare('UPDATE devices SET report_run = NULL, report_n = NULL, presence_session = NULL, presence_conn = NULL, reported = NULL WHERE id = ?')
            .run(input.deviceId);
        }
        this.#setCurrentKeys(input.deviceId, input.signing, input.encryption);
        this.audit('device.enroll', input.deviceId, {
          user_id: row.user_id,
          signing_kid: input.signing.kid,
          encryption_kid: input.encryption.kid,
          enrollment_jti: input.enrollmentJti,
        });
        return { userId: row.user_id, repeated: false };
      })
      .immediate();
  }

  // ---- commands ------------------------------------------------------------

  /**
   * Allocates the device's next `seq` (one IMMEDIATE transaction: two senders
   * never get the same one) and returns it with the key to seal to. Refuses a
   * device without an encryption key or a decommissioned one.
   */
  allocateSeq(deviceId: string): { seq: number; device: DeviceRecord } {
    return this.db.transaction(() => this.#allocateSeq(deviceId)).immediate();
  }

  /**
   * allocateSeq for many devices in one IMMEDIATE transaction (one commit, so
   * one fsync under synchronous=FULL, for the whole batch). Per device: its
   * seq, or the RegistryError allocateSeq would throw (that device changes
   * nothing; the others proceed). Any other error rolls back the whole batch.
   */
  allocateSeqs(deviceIds: readonly string[]): ({ seq: number; device: DeviceRecord } | RegistryError)[] {
    return this.db
      .transaction(() =>
        deviceIds.map((id) => {
          try {
            return this.#allocateSeq(id);
          } catch (err) {
            if (err instanceof RegistryError) return err;
            throw err;
          }
        }),
      )
      .immediate();
  }

  recordCommand(c: NewCommand): void {
    this.db.transaction(() => this.#recordCommand(c)).immediate();
  }

  /**
   * recordCommand for many commands in one IMMEDIATE transaction (one commit).
   * Each command is its own savepoint: one that cannot be recorded (say, its
   * device was removed meanwhile) gets its error and is not recorded, the
   * others are. Nothing is durable, and so nothing may be published, before
   * this returns.
   */
  recordCommands(cs: readonly NewCommand[]): (true | Error)[] {
    const one = this.db.transaction((c: NewCommand) => this.#recordCommand(c));
    return this.db
      .transaction(() =>
        cs.map((c): true | Error => {
          try {
            one(c);
            return true;
          } catch (err) {
            return err instanceof Error ? err : new Error(String(err));
          }
        }),
      )
      .immediate();
  }

  markSent(jti: string): void {
    this.db.prepare('UPDATE commands SET sent_at = ? WHERE jti = ?').run(this.#now(), jti);
  }

  /** markSent for many commands in one transaction (one commit). */
  markSentMany(jtis: readonly string[]): void {
    const update = this.db.prepare('UPDATE commands SET sent_at = ? WHERE jti = ?');
    this.db
      .transaction(() => {
        const now = this.#now();
        for (const jti of jtis) update.run(now, jti);
      })
      .immediate();
  }

  getCommand(jti: string): CommandRecord | undefined {
    const row = this.db.prepare('SELECT * FROM commands WHERE jti = ?').get(jti) as CommandRow | undefined;
    return row ? commandRecord(row) : undefined;
  }

  /** The sealed text of a command (for re-publishing an unanswered one). */
  sealedCommand(jti: string): string | undefined {
    return (this.db.prepare('SELECT sealed FROM commands WHERE jti = ?').get(jti) as { sealed: string } | undefined)?.sealed;
  }

  listCommands(filter: { deviceId?: string; fanoutId?: string; limit?: number } = {}): CommandRecord[] {
    const where: string[] = [];
    const args: (string | number)[] = [];
    if (filter.deviceId !== undefined) {
      where.push('device_id = ?');
      args.push(filter.deviceId);
    }
    if (filter.fanoutId !== undefined) {
      where.push('fanout_id = ?');
      args.push(filter.fanoutId);
    }
    const sql = `SELECT * FROM commands ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at DESC, seq DESC LIMIT ?`;
    return (this.db.prepare(sql).all(...args, filter.limit ?? 1000) as CommandRow[]).map(commandRecord);
  }

  /**
   * Records a verified ack once (by its `ref`), with its effects on the device
   * in the same transaction: `request` applied -> provisioned and bound to the
   * user; `update` with a user -> rebound; `rotate` applied -> the new keys
   * become current; `delete` applied -> decommissioned, keys retired.
   *
   * The first recorded outcome of a command is final. A later ack that agrees
   * with it (same outcome, or `rejected E_REPLAY`: "already seen") is a
   * duplicate. One that claims `applied` where the registry recorded a refusal
   * or failure (or a rotate to other keys) contradicts it: the device was made
   * to apply a command after refusing it (a replay by the broker, or a
   * compromised device). Its effects are NOT applied (the registry would follow
   * the replay, e.g. adopt keys it never accepted), the contradiction is audited
   * as `security.ack_contradiction` with what the ack claimed, and the device is
   * flagged until it is enrolled again or its keys are replaced.
   */
  recordAck(deviceId: string, ack: AckClaims, effects: readonly AckEffect[]): AckRecordOutcome {
    return this.db
      .transaction((): AckRecordOutcome => {
        const row = this.db.prepare('SELECT * FROM commands WHERE jti = ? AND device_id = ?').get(ack.ref, deviceId) as CommandRow | undefined;
        if (!row) return { kind: 'unknown-command' };
        if (row.ack_status !== null) {
          if (!ackContradicts(row, ack)) return { kind: 'duplicate', command: commandRecord(row) };
          const rotated = effects.find((e) => e.kind === 'keys-rotated');
          const detail = {
            jti: row.jti,
            action: row.action,
            seq: row.seq,
            recorded: { status: row.ack_status, code: row.ack_code, ack_jti: row.ack_jti },
            claimed: { status: ack.status, code: ack.code, ack_jti: ack.jti },
            ...(rotated ? { claimed_keys: { signing_kid: rotated.signing.kid, encryption_kid: rotated.encryption.kid } } : {}),
            effects: 'not applied',
          };
          this.audit(ACK_CONTRADICTION_EVENT, deviceId, detail);
          this.db
            .prepare('UPDATE devices SET flagged_at = ?, flag = ? WHERE id = ?')
            .run(this.#now(), JSON.stringify({ event: ACK_CONTRADICTION_EVENT, ...detail }), deviceId);
          return { kind: 'contradiction', command: commandRecord(row) };
        }
        const now = this.#now();
        this.db
          .prepare(
            'UPDATE commands SET ack_status = ?, ack_code = ?, ack_detail = ?, ack_jti = ?, ack_result = ?, acked_at = ? WHERE jti = ? AND ack_status IS NULL',
          )
          .run(ack.status, ack.code, ack.detail, ack.jti, ack.result ? JSON.stringify(ack.result) : null, now, ack.ref);
        this.audit('command.ack', deviceId, { jti: row.jti, action: row.action, seq: row.seq, status: ack.status, code: ack.code, ack_jti: ack.jti });
        if (ack.status === 'applied') for (const e of effects) this.#applyEffect(row, e, now);
        return { kind: 'recorded', command: this.getCommand(row.jti) as CommandRecord };
      })
      .immediate();
  }

  // ---- internals -------------------------------------------------------------

  #applyEffect(row: CommandRow, e: AckEffect, now: number): void {
    const id = row.device_id;
    switch (e.kind) {
      case 'bind-user':
        this.db.prepare('UPDATE devices SET user_id = ?, updated_at = ? WHERE id = ?').run(e.userId, now, id);
        return;
      case 'provisioned':
        this.db
          .prepare("UPDATE devices SET state = 'provisioned', confirmed_at = ?, updated_at = ? WHERE id = ? AND state != 'decommissioned'")
          .run(now, now, id);
        this.audit('device.provisioned', id, { user_id: e.userId });
        return;
      case 'keys-rotated':
        this.#setCurrentKeys(id, e.signing, e.encryption);
        this.audit('device.rotate', id, { signing_kid: e.signing.kid, encryption_kid: e.encryption.kid });
        return;
      case 'decommissioned':
        this.db.prepare("UPDATE devices SET state = 'decommissioned', decommissioned_at = ?, updated_at = ? WHERE id = ?").run(now, now, id);
        this.db.prepare("UPDATE device_keys SET status = 'retired', retired_at = COALESCE(retired_at, ?) WHERE device_id = ?").run(now, id);
        this.audit('device.decommissioned', id, {});
        return;
      case 'upgraded':
        this.#recordUpgrade(row, e.version, now);
        return;
    }
  }

  /**
   * An applied upgrade: the device runs `version` now, and is of the
   * architecture of the release it installed (the board checked it).
   */
  #recordUpgrade(row: CommandRow, version: string | null, now: number): void {
    const arch =
      row.release_sha256 === null
        ? undefined
        : (this.db.prepare('SELECT arch FROM releases WHERE sha256 = ? ORDER BY id DESC LIMIT 1').get(row.release_sha256) as { arch: string } | undefined);
    this.db
      .prepare('UPDATE devices SET agent_version = COALESCE(?, agent_version), arch = COALESCE(?, arch), updated_at = ? WHERE id = ?')
      .run(version, arch?.arch ?? null, now, row.device_id);
    this.audit('device.upgraded', row.device_id, { jti: row.jti, version, ...(arch ? { arch: arch.arch } : {}) });
  }

  #allocateSeq(deviceId: string): { seq: number; device: DeviceRecord } {
    const device = this.requireDevice(deviceId);
    if (device.state === 'decommissioned') {
      throw new RegistryError('E_DECOMMISSIONED', `device ${deviceId} is decommissioned; provision it again with a new token or bundle`);
    }
    if (!device.encryption) throw new RegistryError('E_NO_KEY', `device ${deviceId} has no registered encryption key: nothing is sent (never in plaintext)`);
    const row = this.db.prepare('UPDATE devices SET next_seq = next_seq + 1 WHERE id = ? RETURNING next_seq - 1 AS seq').get(deviceId) as { seq: number };
    return { seq: row.seq, device };
  }

  #recordCommand(c: NewCommand): void {
    this.db
      .prepare(
        `INSERT INTO commands (jti, device_id, action, user_id, params_digest, seq, encryption_kid, sealed, fanout_id, bind_user, created_at, expires_at,
           release_sha256)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        c.jti,
        c.deviceId,
        c.action,
        c.userId,
        c.paramsDigest,
        c.seq,
        c.encryptionKid,
        c.sealed,
        c.fanoutId ?? null,
        c.bindUser ?? null,
        this.#now(),
        c.expiresAt,
        c.releaseSha256 ?? null,
      );
    this.audit('command.create', c.deviceId, {
      jti: c.jti,
      action: c.action,
      seq: c.seq,
      user_id: c.userId,
      params_digest: c.paramsDigest,
      fanout_id: c.fanoutId ?? null,
    });
  }

  #upsertDevice(id: string, userId: string | null, state: DeviceState, origin: DeviceOrigin): void {
    const now = this.#now();
    this.db
      .prepare(
        `INSERT INTO devices (id, user_id, state, origin, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, state = excluded.state, origin = excluded.origin, updated_at = excluded.updated_at,
           flagged_at = NULL, flag = NULL`,
      )
      .run(id, userId, state, origin, now, now);
  }

  /** Makes these keys current; the keys they replace become `previous` (signing: verifies in-flight acks for a grace period). */
  #setCurrentKeys(id: string, signing: PublicJwk | undefined, encryption: PublicJwk): void {
    const now = this.#now();
    this.db.prepare("UPDATE device_keys SET status = 'retired' WHERE device_id = ? AND status = 'previous'").run(id);
    this.db.prepare("UPDATE device_keys SET status = 'previous', retired_at = ? WHERE device_id = ? AND status = 'current'").run(now, id);
    const insert = this.db.prepare(
      `INSERT INTO device_keys (device_id, kid, use, jwk, status, added_at) VALUES (?, ?, ?, ?, 'current', ?)
       ON CONFLICT (device_id, kid) DO UPDATE SET status = 'current', retired_at = NULL, jwk = excluded.jwk`,
    );
    if (signing) insert.run(id, signing.kid, 'sig', JSON.stringify(signing), now);
    insert.run(id, encryption.kid, 'enc', JSON.stringify(encryption), now);
  }

  #device(row: DeviceRow): DeviceRecord {
    const keys = (this.db.prepare('SELECT * FROM device_keys WHERE device_id = ? ORDER BY added_at, kid').all(row.id) as KeyRow[]).map(
      (k): DeviceKeyRecord => ({ kid: k.kid, use: k.use, status: k.status, jwk: JSON.parse(k.jwk) as PublicJwk, addedAt: k.added_at, retiredAt: k.retired_at }),
    );
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
      tags: this.tagsOf(row.id),
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
}

function commandRecord(row: CommandRow): CommandRecord {
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
