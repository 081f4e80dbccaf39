/**
 * Operator accounts in SQLite (the `operators` concern of server/storage/types.ts):
 * each change one IMMEDIATE transaction with its audit row, so the last-admin
 * check and the change it guards cannot interleave with another process's.
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
import type { SqliteDb } from './db.js';

/** How often a token's last use is written at most (not one write per API request). */
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

export class SqliteOperatorStore implements OperatorStore {
  readonly #s: SqliteDb;

  constructor(s: SqliteDb) {
    this.#s = s;
  }

  #row(name: string): OperatorRow | undefined {
    return this.#s.db.prepare('SELECT * FROM operators WHERE name = ?').get(name) as OperatorRow | undefined;
  }

  #require(name: string): OperatorRow {
    const row = this.#row(name);
    if (!row) throw new RegistryError('E_NO_OPERATOR', `no operator ${name}`);
    return row;
  }

  /** E_LAST_ADMIN when `row` is the only enabled admin (called inside the change's transaction). */
  #keepAnAdmin(row: OperatorRow, doing: string): void {
    if (row.role !== 'admin' || row.disabled_at !== null) return;
    const { n } = this.#s.db.prepare("SELECT COUNT(*) AS n FROM operators WHERE role = 'admin' AND disabled_at IS NULL").get() as { n: number };
    if (n <= 1) throw new RegistryError('E_LAST_ADMIN', `${row.name} is the last enabled admin: add another admin before you ${doing} it`);
  }

  async add(input: NewOperator, by: string): Promise<OperatorRecord> {
    const name = checkOperatorName(input.name);
    const role = checkOperatorRole(input.role);
    const hash = checkPasswordHash(input.passwordHash);
    return this.#s.immediate(() => {
      const now = this.#s.now();
      const r = this.#s.db
        .prepare('INSERT INTO operators (name, role, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING')
        .run(name, role, hash, now, now);
      if (r.changes !== 1) throw new RegistryError('E_OPERATOR_EXISTS', `an operator ${name} exists`);
      appendAudit(this.#s, 'operator.add', null, { operator: name, role, by });
      return operatorRecord(this.#require(name));
    });
  }

  async get(name: string): Promise<OperatorRecord | undefined> {
    const row = this.#row(name);
    return row && operatorRecord(row);
  }

  async list(): Promise<OperatorRecord[]> {
    return (this.#s.db.prepare('SELECT * FROM operators ORDER BY name').all() as OperatorRow[]).map(operatorRecord);
  }

  async passwordHash(name: string): Promise<string | undefined> {
    return this.#row(name)?.password_hash;
  }

  async setPassword(name: string, passwordHash: string, by: string): Promise<void> {
    const hash = checkPasswordHash(passwordHash);
    this.#s.immediate(() => {
      this.#require(name);
      this.#s.db.prepare('UPDATE operators SET password_hash = ?, updated_at = ? WHERE name = ?').run(hash, this.#s.now(), name);
      const ended = this.#s.db.prepare('DELETE FROM operator_sessions WHERE operator = ?').run(name).changes;
      appendAudit(this.#s, 'operator.passwd', null, { operator: name, sessions_ended: ended, by });
    });
  }

  async setRole(name: string, role: OperatorRole, by: string): Promise<OperatorRecord> {
    const to = checkOperatorRole(role);
    return this.#s.immediate(() => {
      const row = this.#require(name);
      if (row.role === to) return operatorRecord(row);
      if (to !== 'admin') this.#keepAnAdmin(row, 'demote');
      this.#s.db.prepare('UPDATE operators SET role = ?, updated_at = ? WHERE name = ?').run(to, this.#s.now(), name);
      appendAudit(this.#s, 'operator.role', null, { operator: name, from: row.role, role: to, by });
      return operatorRecord(this.#require(name));
    });
  }

  async setDisabled(name: string, disabled: boolean, by: string): Promise<OperatorRecord> {
    return this.#s.immediate(() => {
      const row = this.#require(name);
      if ((row.disabled_at !== null) === disabled) return operatorRecord(row);
      const now = this.#s.now();
      if (disabled) {
        this.#keepAnAdmin(row, 'disable');
        this.#s.db.prepare('UPDATE operators SET disabled_at = ?, updated_at = ? WHERE name = ?').run(now, now, name);
        const ended = this.#s.db.prepare('DELETE FROM operator_sessions WHERE operator = ?').run(name).changes;
        appendAudit(this.#s, 'operator.disable', null, { operator: name, sessions_ended: ended, by });
      } else {
        this.#s.db.prepare('UPDATE operators SET disabled_at = NULL, updated_at = ? WHERE name = ?').run(now, name);
        appendAudit(this.#s, 'operator.enable', null, { operator: name, by });
      }
      return operatorRecord(this.#require(name));
    });
  }

  async remove(name: string, by: string): Promise<void> {
    this.#s.immediate(() => {
      const row = this.#require(name);
      this.#keepAnAdmin(row, 'remove');
      const tokens = (this.#s.db.prepare('SELECT COUNT(*) AS n FROM operator_tokens WHERE operator = ? AND revoked_at IS NULL').get(name) as { n: number }).n;
      const sessions = (this.#s.db.prepare('SELECT COUNT(*) AS n FROM operator_sessions WHERE operator = ?').get(name) as { n: number }).n;
      this.#s.db.prepare('DELETE FROM operators WHERE name = ?').run(name);
      appendAudit(this.#s, 'operator.remove', null, { operator: name, role: row.role, tokens_revoked: tokens, sessions_ended: sessions, by });
    });
  }

  async createToken(name: string, label: string, ttlMs: number | null, by: string): Promise<{ token: string; record: OperatorTokenRecord }> {
    checkTokenLabel(label);
    const token = newEnrollmentToken();
    const id = randomBytes(9).toString('base64url');
    return this.#s.immediate(() => {
      this.#require(name);
      const now = this.#s.now();
      const expiresAt = ttlMs === null ? null : now + ttlMs;
      this.#s.db
        .prepare('INSERT INTO operator_tokens (hash, id, operator, label, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(hashToken(token), id, name, label, now, expiresAt);
      appendAudit(this.#s, 'operator.token.create', null, { operator: name, token_id: id, label, expires_at: expiresAt, by });
      const row = this.#s.db.prepare('SELECT * FROM operator_tokens WHERE id = ?').get(id) as OperatorTokenRow;
      return { token, record: operatorTokenRecord(row) };
    });
  }

  async listTokens(filter: { operator?: string } = {}): Promise<OperatorTokenRecord[]> {
    const rows = (
      filter.operator === undefined
        ? this.#s.db.prepare('SELECT * FROM operator_tokens ORDER BY created_at DESC, id').all()
        : this.#s.db.prepare('SELECT * FROM operator_tokens WHERE operator = ? ORDER BY created_at DESC, id').all(filter.operator)
    ) as OperatorTokenRow[];
    return rows.map(operatorTokenRecord);
  }

  async revokeToken(id: string, by: string): Promise<void> {
    this.#s.immediate(() => {
      const now = this.#s.now();
      const row = this.#s.db.prepare('UPDATE operator_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING operator').get(now, id) as
        { operator: string } | undefined;
      if (!row) throw new RegistryError('E_NO_OPERATOR_TOKEN', `no unrevoked API token ${id}`);
      appendAudit(this.#s, 'operator.token.revoke', null, { operator: row.operator, token_id: id, by });
    });
  }

  async authenticateToken(token: string): Promise<OperatorPrincipal | undefined> {
    const now = this.#s.now();
    const hash = hashToken(token);
    const row = this.#s.db
      .prepare(
        `SELECT o.name, o.role FROM operator_tokens t JOIN operators o ON o.name = t.operator
         WHERE t.hash = ? AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?) AND o.disabled_at IS NULL`,
      )
      .get(hash, now) as { name: string; role: OperatorRole } | undefined;
    if (!row) return undefined;
    this.#s.db
      .prepare('UPDATE operator_tokens SET last_used_at = ? WHERE hash = ? AND (last_used_at IS NULL OR last_used_at <= ?)')
      .run(now, hash, now - TOKEN_USE_GRANULARITY_MS);
    return { name: row.name, role: row.role };
  }

  async createSession(name: string, limits: SessionLimits): Promise<{ session: string; expiresAt: number }> {
    if (!(limits.idleMs > 0 && limits.absoluteMs > 0)) throw new RangeError('session limits must be positive');
    const session = newEnrollmentToken();
    return this.#s.immediate(() => {
      const row = this.#row(name);
      if (!row || row.disabled_at !== null) throw new RegistryError('E_NO_OPERATOR', `no enabled operator ${name}`);
      const now = this.#s.now();
      const expiresAt = now + limits.absoluteMs;
      this.#s.db
        .prepare('INSERT INTO operator_sessions (hash, operator, created_at, last_seen_at, idle_ms, expires_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(hashToken(session), name, now, now, limits.idleMs, expiresAt);
      appendAudit(this.#s, 'session.create', null, { operator: name, expires_at: expiresAt, by: name });
      return { session, expiresAt };
    });
  }

  async touchSession(session: string): Promise<OperatorPrincipal | undefined> {
    const hash = hashToken(session);
    return this.#s.immediate(() => {
      const now = this.#s.now();
      const row = this.#s.db
        .prepare('SELECT s.*, o.role, o.disabled_at FROM operator_sessions s JOIN operators o ON o.name = s.operator WHERE s.hash = ?')
        .get(hash) as SessionRow | undefined;
      if (!row) return undefined;
      if (!sessionLive(row, now) || row.disabled_at !== null) {
        this.#s.db.prepare('DELETE FROM operator_sessions WHERE hash = ?').run(hash);
        return undefined;
      }
      this.#s.db.prepare('UPDATE operator_sessions SET last_seen_at = ? WHERE hash = ?').run(now, hash);
      return { name: row.operator, role: row.role as OperatorRole };
    });
  }

  async peekSession(session: string): Promise<OperatorPrincipal | undefined> {
    const row = this.#s.db
      .prepare('SELECT s.*, o.role, o.disabled_at FROM operator_sessions s JOIN operators o ON o.name = s.operator WHERE s.hash = ?')
      .get(hashToken(session)) as SessionRow | undefined;
    if (!row || !sessionLive(row, this.#s.now()) || row.disabled_at !== null) return undefined;
    return { name: row.operator, role: row.role as OperatorRole };
  }

  async endSession(session: string): Promise<boolean> {
    return this.#s.immediate(() => {
      const row = this.#s.db.prepare('DELETE FROM operator_sessions WHERE hash = ? RETURNING operator').get(hashToken(session)) as
        { operator: string } | undefined;
      if (!row) return false;
      appendAudit(this.#s, 'session.end', null, { operator: row.operator, by: row.operator });
      return true;
    });
  }
}
