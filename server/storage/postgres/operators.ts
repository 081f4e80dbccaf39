/**
 * Operator accounts in PostgreSQL, as server/storage/sqlite/operators.ts keeps them
 * in SQLite. Each change is one transaction with its audit row; the last-admin
 * check is serialised, so two machines removing
 * or demoting two different admins at once cannot leave none: those changes
 * take one advisory lock first (lockAdmins).
 */
import { randomBytes } from 'node:crypto';
import { RegistryError } from '../errors.js';
import {
  checkOperatorName,
  checkOperatorRole,
  checkPasswordHash,
  checkTokenLabel,
  operatorRecord,
  operatorTokenRecord,
  sessionLive,
  type NewOperator,
  type OperatorPrincipal,
  type OperatorRecord,
  type OperatorRole,
  type OperatorRow,
  type OperatorTokenRecord,
  type OperatorTokenRow,
  type SessionLimits,
} from '../operator-records.js';
import { hashToken, newEnrollmentToken } from '../tokens.js';
import type { OperatorStore } from '../types.js';
import { appendAudit } from './audit.js';
import type { PgDb, Sql } from './db.js';

const TOKEN_USE_GRANULARITY_MS = 60_000;

interface SessionRow {
  hash: string;
  operator: string;
  created_at: number;
  last_seen_at: number;
  idle_ms: number;
  expires_at: number;
  role: string;
  disabled_at: number | null;
}

async function requireRow(sql: Sql, name: string, lock = false): Promise<OperatorRow> {
  const row = await sql.one<OperatorRow>(`SELECT * FROM operators WHERE name = $1${lock ? ' FOR UPDATE' : ''}`, [name]);
  if (!row) throw new RegistryError('E_NO_OPERATOR', `no operator ${name}`);
  return row;
}

/** pg_advisory_xact_lock key of the changes that may take an admin away ("oper" in ASCII). */
const ADMIN_LOCK = 0x6f706572;

/**
 * Serialises the changes that may take an enabled admin away (remove, demote,
 * disable), on every machine, until the transaction ends: taken first, so two
 * of them never deadlock on each other's row locks.
 */
async function lockAdmins(sql: Sql): Promise<void> {
  await sql.run('SELECT pg_advisory_xact_lock($1)', [ADMIN_LOCK]);
}

/** E_LAST_ADMIN when `row` is the only enabled admin (under lockAdmins). */
async function keepAnAdmin(sql: Sql, row: OperatorRow, doing: string): Promise<void> {
  if (row.role !== 'admin' || row.disabled_at !== null) return;
  const admins = await sql.q<{ name: string }>("SELECT name FROM operators WHERE role = 'admin' AND disabled_at IS NULL");
  if (admins.length <= 1) throw new RegistryError('E_LAST_ADMIN', `${row.name} is the last enabled admin: add another admin before you ${doing} it`);
}

export class PgOperatorStore implements OperatorStore {
  readonly #db: PgDb;
  readonly #now: () => number;

  constructor(db: PgDb, now: () => number) {
    this.#db = db;
    this.#now = now;
  }

  async add(input: NewOperator, by: string): Promise<OperatorRecord> {
    const name = checkOperatorName(input.name);
    const role = checkOperatorRole(input.role);
    const hash = checkPasswordHash(input.passwordHash);
    return this.#db.tx(async (sql) => {
      const now = this.#now();
      const row = await sql.one<OperatorRow>(
        'INSERT INTO operators (name, role, password_hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) ON CONFLICT (name) DO NOTHING RETURNING *',
        [name, role, hash, now],
      );
      if (!row) throw new RegistryError('E_OPERATOR_EXISTS', `an operator ${name} exists`);
      await appendAudit(sql, now, 'operator.add', null, { operator: name, role, by });
      return operatorRecord(row);
    });
  }

  async get(name: string): Promise<OperatorRecord | undefined> {
    const row = await this.#db.one<OperatorRow>('SELECT * FROM operators WHERE name = $1', [name]);
    return row && operatorRecord(row);
  }

  async list(): Promise<OperatorRecord[]> {
    return (await this.#db.q<OperatorRow>('SELECT * FROM operators ORDER BY name')).map(operatorRecord);
  }

  async passwordHash(name: string): Promise<string | undefined> {
    return (await this.#db.one<{ password_hash: string }>('SELECT password_hash FROM operators WHERE name = $1', [name]))?.password_hash;
  }

  async setPassword(name: string, passwordHash: string, by: string): Promise<void> {
    const hash = checkPasswordHash(passwordHash);
    await this.#db.tx(async (sql) => {
      const now = this.#now();
      await requireRow(sql, name, true);
      await sql.run('UPDATE operators SET password_hash = $1, updated_at = $2 WHERE name = $3', [hash, now, name]);
      const ended = await sql.run('DELETE FROM operator_sessions WHERE operator = $1', [name]);
      await appendAudit(sql, now, 'operator.passwd', null, { operator: name, sessions_ended: ended, by });
    });
  }

  async setRole(name: string, role: OperatorRole, by: string): Promise<OperatorRecord> {
    const to = checkOperatorRole(role);
    return this.#db.tx(async (sql) => {
      await lockAdmins(sql);
      const now = this.#now();
      const row = await requireRow(sql, name, true);
      if (row.role === to) return operatorRecord(row);
      if (to !== 'admin') await keepAnAdmin(sql, row, 'demote');
      const updated = await sql.one<OperatorRow>('UPDATE operators SET role = $1, updated_at = $2 WHERE name = $3 RETURNING *', [to, now, name]);
      await appendAudit(sql, now, 'operator.role', null, { operator: name, from: row.role, role: to, by });
      return operatorRecord(updated as OperatorRow);
    });
  }

  async setDisabled(name: string, disabled: boolean, by: string): Promise<OperatorRecord> {
    return this.#db.tx(async (sql) => {
      await lockAdmins(sql);
      const now = this.#now();
      const row = await requireRow(sql, name, true);
      if ((row.disabled_at !== null) === disabled) return operatorRecord(row);
      let updated: OperatorRow | undefined;
      if (disabled) {
        await keepAnAdmin(sql, row, 'disable');
        updated = await sql.one<OperatorRow>('UPDATE operators SET disabled_at = $1, updated_at = $1 WHERE name = $2 RETURNING *', [now, name]);
        const ended = await sql.run('DELETE FROM operator_sessions WHERE operator = $1', [name]);
        await appendAudit(sql, now, 'operator.disable', null, { operator: name, sessions_ended: ended, by });
      } else {
        updated = await sql.one<OperatorRow>('UPDATE operators SET disabled_at = NULL, updated_at = $1 WHERE name = $2 RETURNING *', [now, name]);
        await appendAudit(sql, now, 'operator.enable', null, { operator: name, by });
      }
      return operatorRecord(updated as OperatorRow);
    });
  }

  async remove(name: string, by: string): Promise<void> {
    await this.#db.tx(async (sql) => {
      await lockAdmins(sql);
      const now = this.#now();
      const row = await requireRow(sql, name, true);
      await keepAnAdmin(sql, row, 'remove');
      const tokens = await sql.one<{ n: number }>('SELECT COUNT(*)::int AS n FROM operator_tokens WHERE operator = $1 AND revoked_at IS NULL', [name]);
      const sessions = await sql.one<{ n: number }>('SELECT COUNT(*)::int AS n FROM operator_sessions WHERE operator = $1', [name]);
      await sql.run('DELETE FROM operators WHERE name = $1', [name]);
      await appendAudit(sql, now, 'operator.remove', null, {
        operator: name,
        role: row.role,
        tokens_revoked: tokens?.n ?? 0,
        sessions_ended: sessions?.n ?? 0,
        by,
      });
    });
  }

  async createToken(name: string, label: string, ttlMs: number | null, by: string): Promise<{ token: string; record: OperatorTokenRecord }> {
    checkTokenLabel(label);
    const token = newEnrollmentToken();
    const id = randomBytes(9).toString('base64url');
    return this.#db.tx(async (sql) => {
      // The operator's row lock: a concurrent remove waits, or this finds it gone.
      await requireRow(sql, name, true);
      const now = this.#now();
      const expiresAt = ttlMs === null ? null : now + ttlMs;
      const row = await sql.one<OperatorTokenRow>(
        'INSERT INTO operator_tokens (hash, id, operator, label, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING *',
        [hashToken(token), id, name, label, now, expiresAt],
      );
      await appendAudit(sql, now, 'operator.token.create', null, { operator: name, token_id: id, label, expires_at: expiresAt, by });
      return { token, record: operatorTokenRecord(row as OperatorTokenRow) };
    });
  }

  async listTokens(filter: { operator?: string } = {}): Promise<OperatorTokenRecord[]> {
    const rows =
      filter.operator === undefined
        ? await this.#db.q<OperatorTokenRow>('SELECT * FROM operator_tokens ORDER BY created_at DESC, id')
        : await this.#db.q<OperatorTokenRow>('SELECT * FROM operator_tokens WHERE operator = $1 ORDER BY created_at DESC, id', [filter.operator]);
    return rows.map(operatorTokenRecord);
  }

  async revokeToken(id: string, by: string): Promise<void> {
    await this.#db.tx(async (sql) => {
      const now = this.#now();
      const row = await sql.one<{ operator: string }>('UPDATE operator_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL RETURNING operator', [
        now,
        id,
      ]);
      if (!row) throw new RegistryError('E_NO_OPERATOR_TOKEN', `no unrevoked API token ${id}`);
      await appendAudit(sql, now, 'operator.token.revoke', null, { operator: row.operator, token_id: id, by });
    });
  }

  async authenticateToken(token: string): Promise<OperatorPrincipal | undefined> {
    const now = this.#now();
    const hash = hashToken(token);
    const row = await this.#db.one<{ name: string; role: OperatorRole }>(
      `SELECT o.name, o.role FROM operator_tokens t JOIN operators o ON o.name = t.operator
       WHERE t.hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $2) AND o.disabled_at IS NULL`,
      [hash, now],
    );
    if (!row) return undefined;
    await this.#db.run('UPDATE operator_tokens SET last_used_at = $1 WHERE hash = $2 AND (last_used_at IS NULL OR last_used_at <= $3)', [
      now,
      hash,
      now - TOKEN_USE_GRANULARITY_MS,
    ]);
    return { name: row.name, role: row.role };
  }

  async createSession(name: string, limits: SessionLimits): Promise<{ session: string; expiresAt: number }> {
    if (!(limits.idleMs > 0 && limits.absoluteMs > 0)) throw new RangeError('session limits must be positive');
    const session = newEnrollmentToken();
    return this.#db.tx(async (sql) => {
      const row = await sql.one<OperatorRow>('SELECT * FROM operators WHERE name = $1 FOR SHARE', [name]);
      if (!row || row.disabled_at !== null) throw new RegistryError('E_NO_OPERATOR', `no enabled operator ${name}`);
      const now = this.#now();
      const expiresAt = now + limits.absoluteMs;
      await sql.run('INSERT INTO operator_sessions (hash, operator, created_at, last_seen_at, idle_ms, expires_at) VALUES ($1, $2, $3, $3, $4, $5)', [
        hashToken(session),
        name,
        now,
        limits.idleMs,
        expiresAt,
      ]);
      await appendAudit(sql, now, 'session.create', null, { operator: name, expires_at: expiresAt, by: name });
      return { session, expiresAt };
    });
  }

  async touchSession(session: string): Promise<OperatorPrincipal | undefined> {
    const hash = hashToken(session);
    return this.#db.tx(async (sql) => {
      const now = this.#now();
      const row = await sql.one<SessionRow>(
        'SELECT s.*, o.role, o.disabled_at FROM operator_sessions s JOIN operators o ON o.name = s.operator WHERE s.hash = $1 FOR UPDATE OF s',
        [hash],
      );
      if (!row) return undefined;
      if (!sessionLive(row, now) || row.disabled_at !== null) {
        await sql.run('DELETE FROM operator_sessions WHERE hash = $1', [hash]);
        return undefined;
      }
      await sql.run('UPDATE operator_sessions SET last_seen_at = GREATEST(last_seen_at, $1) WHERE hash = $2', [now, hash]);
      return { name: row.operator, role: row.role as OperatorRole };
    });
  }

  async peekSession(session: string): Promise<OperatorPrincipal | undefined> {
    const row = await this.#db.one<SessionRow>(
      'SELECT s.*, o.role, o.disabled_at FROM operator_sessions s JOIN operators o ON o.name = s.operator WHERE s.hash = $1',
      [hashToken(session)],
    );
    if (!row || !sessionLive(row, this.#now()) || row.disabled_at !== null) return undefined;
    return { name: row.operator, role: row.role as OperatorRole };
  }

  async endSession(session: string): Promise<boolean> {
    return this.#db.tx(async (sql) => {
      const row = await sql.one<{ operator: string }>('DELETE FROM operator_sessions WHERE hash = $1 RETURNING operator', [hashToken(session)]);
      if (!row) return false;
      await appendAudit(sql, this.#now(), 'session.end', null, { operator: row.operator, by: row.operator });
      return true;
    });
  }
}
