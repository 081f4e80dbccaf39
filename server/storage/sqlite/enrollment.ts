/**
 * Enrollment tokens in SQLite: one-time tokens (only their SHA-256 stored,
 * server/storage/tokens.ts), the enrollment that consumes one and registers
 * the board's keys in one IMMEDIATE transaction, and the tokens as an operator
 * sees them (`token list`, and `device list --pending`: boards bundled but
 * never enrolled). The token text is never stored; only its metadata is listed.
 */
import { RegistryError } from '../errors.js';
import type { TokenListing } from '../records.js';
import { TOKEN_ID_LENGTH, tokenId, tokenListing, type TokenListingRow, type TokenRow } from '../rows.js';
import { hashToken, newEnrollmentToken } from '../tokens.js';
import type { EnrollInput, EnrollmentStore } from '../types.js';
import { appendAudit } from './audit.js';
import type { SqliteDb } from './db.js';
import { getDevice, setCurrentKeys, upsertDevice } from './devices.js';

const SELECT = `SELECT t.hash, t.revoked_at, t.device_id, t.user_id, t.created_at, t.expires_at, t.used_at, d.enrolled_at, d.state
  FROM enrollment_tokens t LEFT JOIN devices d ON d.id = t.device_id`;

export class SqliteEnrollmentStore implements EnrollmentStore {
  readonly #s: SqliteDb;

  constructor(s: SqliteDb) {
    this.#s = s;
  }

  /** Creates a one-time token bound to a device and a user; returns the token text, which is never stored. */
  async createToken(deviceId: string, userId: string, ttlMs: number, by?: string): Promise<{ token: string; expiresAt: number; id: string }> {
    const token = newEnrollmentToken();
    const now = this.#s.now();
    const expiresAt = now + ttlMs;
    this.#s.db
      .transaction(() => {
        this.#s.db
          .prepare('INSERT INTO enrollment_tokens (hash, device_id, user_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)')
          .run(hashToken(token), deviceId, userId, now, expiresAt);
        appendAudit(this.#s, 'token.create', deviceId, {
          user_id: userId,
          expires_at: expiresAt,
          ...(by !== undefined ? { token_id: tokenId(hashToken(token)), by } : {}),
        });
      })
      .immediate();
    return { token, expiresAt, id: tokenId(hashToken(token)) };
  }

  /** Revokes an unused token by its id, in one IMMEDIATE transaction with its audit row. */
  async revokeToken(id: string, by: string): Promise<TokenListing> {
    return this.#s.db
      .transaction(() => {
        const now = this.#s.now();
        const rows =
          /^[0-9a-f]+$/.test(id) && id.length === TOKEN_ID_LENGTH
            ? (this.#s.db.prepare('SELECT * FROM enrollment_tokens WHERE substr(hash, 1, ?) = ?').all(TOKEN_ID_LENGTH, id) as TokenRow[])
            : [];
        const row = rows[0];
        if (!row || rows.length > 1 || row.revoked_at !== null)
          throw new RegistryError('E_NO_TOKEN', `no enrollment token ${id} to revoke (unknown, or already revoked)`);
        if (row.used_at !== null)
          throw new RegistryError('E_TOKEN_USED', `enrollment token ${id} was already used (${new Date(row.used_at).toISOString()}); nothing to revoke`);
        this.#s.db.prepare('UPDATE enrollment_tokens SET revoked_at = ? WHERE hash = ?').run(now, row.hash);
        appendAudit(this.#s, 'token.revoke', row.device_id, { token_id: id, user_id: row.user_id, by });
        return tokenListing(this.#s.db.prepare(`${SELECT} WHERE t.hash = ?`).get(row.hash) as TokenListingRow, now);
      })
      .immediate();
  }

  /**
   * Accepts an enrollment: checks and consumes the token (bound to `deviceId`),
   * registers the keys as the device's current ones and marks it enrolling,
   * all in one transaction. Returns the user the token binds.
   */
  async enroll(input: EnrollInput): Promise<{ userId: string; repeated: boolean }> {
    return this.#s.db
      .transaction(() => {
        const now = this.#s.now();
        const row = this.#s.db.prepare('SELECT * FROM enrollment_tokens WHERE hash = ?').get(hashToken(input.token)) as TokenRow | undefined;
        if (!row) throw new RegistryError('E_TOKEN_INVALID', 'the enrollment token is unknown');
        if (row.used_at !== null) {
          // The same device repeating its enrollment (it missed our `request`) with the same keys: answer again, change nothing.
          const device = getDevice(this.#s, input.deviceId);
          if (
            row.device_id === input.deviceId &&
            device?.state === 'enrolling' &&
            device.signing?.kid === input.signing.kid &&
            device.encryption?.kid === input.encryption.kid
          ) {
            appendAudit(this.#s, 'device.enroll.repeat', input.deviceId, { enrollment_jti: input.enrollmentJti });
            return { userId: row.user_id, repeated: true };
          }
          throw new RegistryError('E_TOKEN_USED', `the enrollment token was already used (${new Date(row.used_at).toISOString()})`);
        }
        if (row.revoked_at !== null) throw new RegistryError('E_TOKEN_REVOKED', `the enrollment token was revoked (${new Date(row.revoked_at).toISOString()})`);
        if (row.expires_at <= now) throw new RegistryError('E_TOKEN_EXPIRED', `the enrollment token expired at ${new Date(row.expires_at).toISOString()}`);
        if (row.device_id !== input.deviceId)
          throw new RegistryError('E_TOKEN_DEVICE', `the enrollment token is bound to another device, not ${input.deviceId}`);
        const consumed = this.#s.db
          .prepare('UPDATE enrollment_tokens SET used_at = ?, used_by = ? WHERE hash = ? AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ?')
          .run(now, input.enrollmentJti, row.hash, now);
        if (consumed.changes !== 1) throw new RegistryError('E_TOKEN_USED', 'the enrollment token was already used');
        const signingBefore = this.#s.db
          .prepare("SELECT kid FROM device_keys WHERE device_id = ? AND use = 'sig' AND status = 'current'")
          .get(input.deviceId) as { kid: string } | undefined;
        upsertDevice(this.#s, input.deviceId, row.user_id, 'enrolling', 'enrollment');
        this.#s.db.prepare('UPDATE devices SET enrolled_at = ?, decommissioned_at = NULL WHERE id = ?').run(now, input.deviceId);
        // New keys are a new identity, whose agent counts its report positions afresh (and its seq from 0).
        if (signingBefore?.kid !== input.signing.kid) {
          this.#s.db
            .prepare('UPDATE devices SET report_run = NULL, report_n = NULL, presence_session = NULL, presence_conn = NULL, reported = NULL WHERE id = ?')
            .run(input.deviceId);
        }
        setCurrentKeys(this.#s, input.deviceId, input.signing, input.encryption);
        appendAudit(this.#s, 'device.enroll', input.deviceId, {
          user_id: row.user_id,
          signing_kid: input.signing.kid,
          encryption_kid: input.encryption.kid,
          enrollment_jti: input.enrollmentJti,
        });
        return { userId: row.user_id, repeated: false };
      })
      .immediate();
  }

  /** Every token (or those of one device), newest first. */
  async listTokens(filter: { deviceId?: string } = {}): Promise<TokenListing[]> {
    const now = this.#s.now();
    const rows = (
      filter.deviceId === undefined
        ? this.#s.db.prepare(`${SELECT} ORDER BY t.created_at DESC, t.device_id`).all()
        : this.#s.db.prepare(`${SELECT} WHERE t.device_id = ? ORDER BY t.created_at DESC`).all(filter.deviceId)
    ) as TokenListingRow[];
    return rows.map((r) => tokenListing(r, now));
  }

  /**
   * Devices whose newest token is unused and that have not enrolled since it was
   * issued (a board bundled, or re-bundled, and never enrolled), with that token
   * (still valid or expired: whether the board can still enroll with it).
   */
  async pendingEnrollments(): Promise<TokenListing[]> {
    const now = this.#s.now();
    const rows = this.#s.db
      .prepare(
        `${SELECT} WHERE t.used_at IS NULL AND t.revoked_at IS NULL AND (d.enrolled_at IS NULL OR d.enrolled_at < t.created_at)
           AND t.created_at = (SELECT MAX(created_at) FROM enrollment_tokens u WHERE u.device_id = t.device_id)
         ORDER BY t.device_id`,
      )
      .all() as TokenListingRow[];
    return rows.map((r) => tokenListing(r, now));
  }
}
