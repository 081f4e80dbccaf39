/**
 * Commands, their acks and the legacy fan-outs in SQLite: a sealed command
 * recorded (audited command.create) before it is published, an ack recorded
 * once with its effects on the device in the same IMMEDIATE transaction.
 */
import type { AckClaims } from '../../../protocol/index.js';
import type { AckRecordOutcome, CommandRecord, NewCommand } from '../records.js';
import { commandRecord, type CommandRow } from '../rows.js';
import { ACK_CONTRADICTION_EVENT, COMMAND_SENT_EVENT, ackContradicts, contradictionDetail, deliveryDetail, type DeliveryRow } from '../rules.js';
import type { AckEffect, CommandListFilter, CommandStore } from '../types.js';
import { appendAudit } from './audit.js';
import type { SqliteDb } from './db.js';
import { setCurrentKeys } from './devices.js';

/** A command by its jti (in the caller's transaction, when in one). */
export function readCommand(db: SqliteDb['db'], jti: string): CommandRecord | undefined {
  const row = db.prepare('SELECT * FROM commands WHERE jti = ?').get(jti) as CommandRow | undefined;
  return row ? commandRecord(row) : undefined;
}

export function recordCommand(s: SqliteDb, c: NewCommand): void {
  s.db
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
      s.now(),
      c.expiresAt,
      c.releaseSha256 ?? null,
    );
  appendAudit(s, 'command.create', c.deviceId, {
    jti: c.jti,
    action: c.action,
    seq: c.seq,
    user_id: c.userId,
    params_digest: c.paramsDigest,
    fanout_id: c.fanoutId ?? null,
    ...(c.via !== undefined ? { via: c.via } : {}),
    ...(c.by !== undefined ? { by: c.by } : {}),
  });
}

export function applyEffect(s: SqliteDb, row: CommandRow, e: AckEffect, now: number): void {
  const id = row.device_id;
  switch (e.kind) {
    case 'bind-user':
      s.db.prepare('UPDATE devices SET user_id = ?, updated_at = ? WHERE id = ?').run(e.userId, now, id);
      return;
    case 'provisioned':
      s.db.prepare("UPDATE devices SET state = 'provisioned', confirmed_at = ?, updated_at = ? WHERE id = ? AND state != 'decommissioned'").run(now, now, id);
      appendAudit(s, 'device.provisioned', id, { user_id: e.userId });
      return;
    case 'keys-rotated':
      setCurrentKeys(s, id, e.signing, e.encryption);
      appendAudit(s, 'device.rotate', id, { signing_kid: e.signing.kid, encryption_kid: e.encryption.kid });
      return;
    case 'decommissioned':
      s.db.prepare("UPDATE devices SET state = 'decommissioned', decommissioned_at = ?, updated_at = ? WHERE id = ?").run(now, now, id);
      s.db.prepare("UPDATE device_keys SET status = 'retired', retired_at = COALESCE(retired_at, ?) WHERE device_id = ?").run(now, id);
      appendAudit(s, 'device.decommissioned', id, {});
      return;
    case 'upgraded':
      recordUpgrade(s, row, e.version, now);
      return;
  }
}

/**
 * An applied upgrade: the device runs `version` now, and is of the
 * architecture of the release it installed (the board checked it).
 */
export function recordUpgrade(s: SqliteDb, row: CommandRow, version: string | null, now: number): void {
  const arch =
    row.release_sha256 === null
      ? undefined
      : (s.db.prepare('SELECT arch FROM releases WHERE sha256 = ? ORDER BY id DESC LIMIT 1').get(row.release_sha256) as { arch: string } | undefined);
  s.db
    .prepare('UPDATE devices SET agent_version = COALESCE(?, agent_version), arch = COALESCE(?, arch), updated_at = ? WHERE id = ?')
    .run(version, arch?.arch ?? null, now, row.device_id);
  appendAudit(s, 'device.upgraded', row.device_id, { jti: row.jti, version, ...(arch ? { arch: arch.arch } : {}) });
}

export class SqliteCommandStore implements CommandStore {
  readonly #s: SqliteDb;

  constructor(s: SqliteDb) {
    this.#s = s;
  }

  async record(c: NewCommand): Promise<void> {
    this.#s.db.transaction(() => recordCommand(this.#s, c)).immediate();
  }

  /**
   * recordCommand for many commands in one IMMEDIATE transaction (one commit).
   * Each command is its own savepoint: one that cannot be recorded (say, its
   * device was removed meanwhile) gets its error and is not recorded, the
   * others are. Nothing is durable, and so nothing may be published, before
   * this returns.
   */
  async recordMany(cs: readonly NewCommand[]): Promise<(true | Error)[]> {
    const one = this.#s.db.transaction((c: NewCommand) => recordCommand(this.#s, c));
    return this.#s.db
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

  async markSent(jti: string): Promise<void> {
    return this.markSentMany([jti]);
  }

  /**
   * markSent for many commands in one transaction (one commit). The first
   * delivery of each (the broker took it) is audited `command.sent`; a
   * re-publish moves sent_at only.
   */
  async markSentMany(jtis: readonly string[]): Promise<void> {
    const read = this.#s.db.prepare('SELECT jti, device_id, action, seq, fanout_id, sent_at FROM commands WHERE jti = ?');
    const update = this.#s.db.prepare('UPDATE commands SET sent_at = ? WHERE jti = ?');
    this.#s.db
      .transaction(() => {
        const now = this.#s.now();
        for (const jti of jtis) {
          const row = read.get(jti) as DeliveryRow | undefined;
          if (!row) continue;
          update.run(now, jti);
          if (row.sent_at === null) appendAudit(this.#s, COMMAND_SENT_EVENT, row.device_id, deliveryDetail(row));
        }
      })
      .immediate();
  }

  async get(jti: string): Promise<CommandRecord | undefined> {
    return readCommand(this.#s.db, jti);
  }

  /** The sealed text of a command (for re-publishing an unanswered one). */
  async sealed(jti: string): Promise<string | undefined> {
    return (this.#s.db.prepare('SELECT sealed FROM commands WHERE jti = ?').get(jti) as { sealed: string } | undefined)?.sealed;
  }

  async list(filter: CommandListFilter = {}): Promise<CommandRecord[]> {
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
    return (this.#s.db.prepare(sql).all(...args, filter.limit ?? 1000) as CommandRow[]).map(commandRecord);
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
  async recordAck(deviceId: string, ack: AckClaims, effects: readonly AckEffect[], signed?: string): Promise<AckRecordOutcome> {
    return this.#s.db
      .transaction((): AckRecordOutcome => {
        const row = this.#s.db.prepare('SELECT * FROM commands WHERE jti = ? AND device_id = ?').get(ack.ref, deviceId) as CommandRow | undefined;
        if (!row) return { kind: 'unknown-command' };
        if (row.ack_status !== null) {
          if (!ackContradicts(row, ack)) return { kind: 'duplicate', command: commandRecord(row) };
          const detail = contradictionDetail(row, ack, effects, signed);
          appendAudit(this.#s, ACK_CONTRADICTION_EVENT, deviceId, detail);
          this.#s.db
            .prepare('UPDATE devices SET flagged_at = ?, flag = ? WHERE id = ?')
            .run(this.#s.now(), JSON.stringify({ event: ACK_CONTRADICTION_EVENT, ...detail }), deviceId);
          return { kind: 'contradiction', command: commandRecord(row) };
        }
        const now = this.#s.now();
        this.#s.db
          .prepare(
            'UPDATE commands SET ack_status = ?, ack_code = ?, ack_detail = ?, ack_jti = ?, ack_result = ?, acked_at = ? WHERE jti = ? AND ack_status IS NULL',
          )
          .run(ack.status, ack.code, ack.detail, ack.jti, ack.result ? JSON.stringify(ack.result) : null, now, ack.ref);
        appendAudit(this.#s, 'command.ack', deviceId, {
          jti: row.jti,
          action: row.action,
          seq: row.seq,
          status: ack.status,
          code: ack.code,
          ack_jti: ack.jti,
          ...(signed !== undefined ? { ack_jws: signed } : {}),
        });
        if (ack.status === 'applied') for (const e of effects) applyEffect(this.#s, row, e, now);
        return { kind: 'recorded', command: readCommand(this.#s.db, row.jti) as CommandRecord };
      })
      .immediate();
  }
}
