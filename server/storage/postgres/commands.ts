/**
 * Commands and acks in PostgreSQL, as
 * server/storage/sqlite/commands.ts keeps them in SQLite (same rows, errors, audit
 * events and detail). An ack is recorded under the command's row lock (SELECT
 * ... FOR UPDATE): of two processes recording acks of one command, the second
 * waits and then sees the first's outcome (a duplicate or a contradiction).
 * The effects of an applied ack are what the caller lists,
 * applied in the same transaction.
 */
import type { AckClaims } from '../../../protocol/index.js';
import { RegistryError } from '../errors.js';
import type { AckRecordOutcome, CommandRecord, NewCommand } from '../records.js';
import { commandRecord, type CommandRow } from '../rows.js';
import { ACK_CONTRADICTION_EVENT, COMMAND_SENT_EVENT, ackContradicts, contradictionDetail, deliveryDetail, type DeliveryRow } from '../rules.js';
import type { AckEffect, CommandListFilter, CommandStore } from '../types.js';
import { appendAudit } from './audit.js';
import { mapError, type PgDb, type Sql } from './db.js';
import { setCurrentKeys } from './devices.js';

export class PgCommandStore implements CommandStore {
  readonly #db: PgDb;
  readonly #now: () => number;

  constructor(db: PgDb, now: () => number) {
    this.#db = db;
    this.#now = now;
  }

  async record(c: NewCommand): Promise<void> {
    await this.#db.tx((sql) => this.#record(sql, c));
  }

  /**
   * record for many commands in one transaction (one commit). Each command is
   * its own savepoint: one that cannot be recorded gets its error and is not
   * recorded, the others are. A lost connection fails the whole call.
   */
  recordMany(cs: readonly NewCommand[]): Promise<(true | Error)[]> {
    if (cs.length === 0) return Promise.resolve([]);
    return this.#db.tx(async (sql) => {
      const results: (true | Error)[] = [];
      for (const c of cs) {
        await sql.run('SAVEPOINT record_one');
        try {
          await this.#record(sql, c);
          await sql.run('RELEASE SAVEPOINT record_one');
          results.push(true);
        } catch (err) {
          if (err instanceof RegistryError && err.code === 'E_STORAGE_UNAVAILABLE') throw err;
          await sql.run('ROLLBACK TO SAVEPOINT record_one');
          const mapped = mapError(err);
          results.push(mapped instanceof Error ? mapped : new Error(String(mapped)));
        }
      }
      return results;
    });
  }

  async markSent(jti: string): Promise<void> {
    return this.markSentMany([jti]);
  }

  /** One transaction; the first delivery of each command is audited `command.sent` (a re-publish moves sent_at only). */
  async markSentMany(jtis: readonly string[]): Promise<void> {
    if (jtis.length === 0) return;
    const now = this.#now();
    await this.#db.tx(async (sql) => {
      const rows = await sql.q<DeliveryRow>(
        `UPDATE commands c SET sent_at = $1 FROM (SELECT jti, sent_at FROM commands WHERE jti = ANY($2) ORDER BY jti FOR UPDATE) o
         WHERE c.jti = o.jti RETURNING c.jti, c.device_id, c.action, c.seq, c.fanout_id, o.sent_at`,
        [now, [...jtis]],
      );
      const order = new Map(jtis.map((j, i) => [j, i]));
      rows.sort((a, b) => (order.get(a.jti) ?? 0) - (order.get(b.jti) ?? 0));
      for (const row of rows) if (row.sent_at === null) await appendAudit(sql, now, COMMAND_SENT_EVENT, row.device_id, deliveryDetail(row));
    });
  }

  async get(jti: string): Promise<CommandRecord | undefined> {
    const row = await this.#db.one<CommandRow>('SELECT * FROM commands WHERE jti = $1', [jti]);
    return row ? commandRecord(row) : undefined;
  }

  async sealed(jti: string): Promise<string | undefined> {
    return (await this.#db.one<{ sealed: string }>('SELECT sealed FROM commands WHERE jti = $1', [jti]))?.sealed;
  }

  async list(filter: CommandListFilter = {}): Promise<CommandRecord[]> {
    const where: string[] = [];
    const args: (string | number)[] = [];
    if (filter.deviceId !== undefined) {
      args.push(filter.deviceId);
      where.push(`device_id = $${args.length}`);
    }
    if (filter.fanoutId !== undefined) {
      args.push(filter.fanoutId);
      where.push(`fanout_id = $${args.length}`);
    }
    args.push(filter.limit ?? 1000);
    const rows = await this.#db.q<CommandRow>(
      `SELECT * FROM commands ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at DESC, seq DESC LIMIT $${args.length}`,
      args,
    );
    return rows.map(commandRecord);
  }

  /**
   * As server/storage/sqlite/commands.ts recordAck: the first recorded outcome of a
   * command is final; an agreeing ack is a duplicate; one claiming `applied`
   * against a recorded refusal (or other keys for a rotate) is a contradiction:
   * audited, the device flagged, no effects. A new `applied` ack applies
   * `effects` in order, in this transaction.
   */
  recordAck(deviceId: string, ack: AckClaims, effects: readonly AckEffect[], signed?: string): Promise<AckRecordOutcome> {
    return this.#db.tx(async (sql): Promise<AckRecordOutcome> => {
      const row = await sql.one<CommandRow>('SELECT * FROM commands WHERE jti = $1 AND device_id = $2 FOR UPDATE', [ack.ref, deviceId]);
      if (!row) return { kind: 'unknown-command' };
      const now = this.#now();
      if (row.ack_status !== null) {
        if (!ackContradicts(row, ack)) return { kind: 'duplicate', command: commandRecord(row) };
        const detail = contradictionDetail(row, ack, effects, signed);
        await appendAudit(sql, now, ACK_CONTRADICTION_EVENT, deviceId, detail);
        await sql.run('UPDATE devices SET flagged_at = $1, flag = $2 WHERE id = $3', [
          now,
          JSON.stringify({ event: ACK_CONTRADICTION_EVENT, ...detail }),
          deviceId,
        ]);
        return { kind: 'contradiction', command: commandRecord(row) };
      }
      const updated = await sql.one<CommandRow>(
        `UPDATE commands SET ack_status = $1, ack_code = $2, ack_detail = $3, ack_jti = $4, ack_result = $5, acked_at = $6
         WHERE jti = $7 AND ack_status IS NULL RETURNING *`,
        [ack.status, ack.code, ack.detail, ack.jti, ack.result ? JSON.stringify(ack.result) : null, now, ack.ref],
      );
      await appendAudit(sql, now, 'command.ack', deviceId, {
        jti: row.jti,
        action: row.action,
        seq: row.seq,
        status: ack.status,
        code: ack.code,
        ack_jti: ack.jti,
        ...(signed !== undefined ? { ack_jws: signed } : {}),
      });
      if (ack.status === 'applied') {
        // The device row's lock for the effects (after the command's: the one order every path takes).
        await sql.run('SELECT 1 FROM devices WHERE id = $1 FOR UPDATE', [deviceId]);
        for (const effect of effects) await this.#apply(sql, row, effect, now);
      }
      return { kind: 'recorded', command: commandRecord(updated ?? row) };
    });
  }

  // ---- internals -------------------------------------------------------------

  async #record(sql: Sql, c: NewCommand): Promise<void> {
    const now = this.#now();
    await sql.run(
      `INSERT INTO commands (jti, device_id, action, user_id, params_digest, seq, encryption_kid, sealed, fanout_id, bind_user, created_at, expires_at,
         release_sha256)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
      [
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
        now,
        c.expiresAt,
        c.releaseSha256 ?? null,
      ],
    );
    await appendAudit(sql, now, 'command.create', c.deviceId, {
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

  /** One effect of an applied ack, with the SQL and audit rows of server/storage/sqlite/commands.ts applyEffect / recordUpgrade. */
  async #apply(sql: Sql, row: CommandRow, effect: AckEffect, now: number): Promise<void> {
    const id = row.device_id;
    switch (effect.kind) {
      case 'bind-user':
        await sql.run('UPDATE devices SET user_id = $1, updated_at = $2 WHERE id = $3', [effect.userId, now, id]);
        return;
      case 'provisioned':
        await sql.run("UPDATE devices SET state = 'provisioned', confirmed_at = $1, updated_at = $1 WHERE id = $2 AND state != 'decommissioned'", [now, id]);
        await appendAudit(sql, now, 'device.provisioned', id, { user_id: effect.userId });
        return;
      case 'keys-rotated':
        await setCurrentKeys(sql, now, id, effect.signing, effect.encryption);
        await appendAudit(sql, now, 'device.rotate', id, { signing_kid: effect.signing.kid, encryption_kid: effect.encryption.kid });
        return;
      case 'decommissioned':
        await sql.run("UPDATE devices SET state = 'decommissioned', decommissioned_at = $1, updated_at = $1 WHERE id = $2", [now, id]);
        await sql.run("UPDATE device_keys SET status = 'retired', retired_at = COALESCE(retired_at, $1) WHERE device_id = $2", [now, id]);
        await appendAudit(sql, now, 'device.decommissioned', id, {});
        return;
      case 'upgraded': {
        const version = effect.version !== null && effect.version.length <= 64 ? effect.version : null;
        const arch =
          row.release_sha256 === null
            ? undefined
            : await sql.one<{ arch: string }>('SELECT arch FROM releases WHERE sha256 = $1 ORDER BY id DESC LIMIT 1', [row.release_sha256]);
        await sql.run('UPDATE devices SET agent_version = COALESCE($1, agent_version), arch = COALESCE($2, arch), updated_at = $3 WHERE id = $4', [
          version,
          arch?.arch ?? null,
          now,
          id,
        ]);
        await appendAudit(sql, now, 'device.upgraded', id, { jti: row.jti, version, ...(arch ? { arch: arch.arch } : {}) });
        return;
      }
    }
  }
}
