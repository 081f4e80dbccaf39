/**
 * Enrollment tokens in PostgreSQL, as server/storage/sqlite/enrollment.ts (createToken,
 * enroll) and token-list.ts keep them in SQLite. A token is consumed under its
 * row lock and by a conditional UPDATE (used_at IS NULL): of two enrollments
 * with one token, on any machines, exactly one is accepted.
 */
import { RegistryError } from '../errors.js';
import { hashToken, newEnrollmentToken } from '../tokens.js';
import type { TokenListing } from '../records.js';
import { TOKEN_ID_LENGTH, tokenId, tokenListing, type TokenListingRow, type TokenRow } from '../rows.js';
import type { EnrollInput, EnrollmentStore } from '../types.js';
import { appendAudit } from './audit.js';
import type { PgDb } from './db.js';
import { getDevice, setCurrentKeys, upsertDevice } from './devices.js';

const SELECT = `SELECT t.hash, t.revoked_at, t.device_id, t.user_id, t.created_at, t.expires_at, t.used_at, d.enrolled_at, d.state
  FROM enrollment_tokens t LEFT JOIN devices d ON d.id = t.device_id`;

export class PgEnrollmentStore implements EnrollmentStore {
  readonly #db: PgDb;
  readonly #now: () => number;

  constructor(db: PgDb, now: () => number) {
    this.#db = db;
    this.#now = now;
  }

  async createToken(deviceId: string, userId: string, ttlMs: number, by?: string): Promise<{ token: string; expiresAt: number; id: string }> {
    const token = newEnrollmentToken();
    const now = this.#now();
    const expiresAt = now + ttlMs;
    await this.#db.tx(async (sql) => {
      await sql.run('INSERT INTO enrollment_tokens (hash, device_id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)', [
        hashToken(token),
        deviceId,
        userId,
        now,
        expiresAt,
      ]);
      await appendAudit(sql, now, 'token.create', deviceId, {
        user_id: userId,
        expires_at: expiresAt,
        ...(by !== undefined ? { token_id: tokenId(hashToken(token)), by } : {}),
      });
    });
    return { token, expiresAt, id: tokenId(hashToken(token)) };
  }

  /** As server/storage/sqlite/enrollment.ts revokeToken, under the token's row lock. */
  revokeToken(id: string, by: string): Promise<TokenListing> {
    return this.#db.tx(async (sql) => {
      const now = this.#now();
      const rows =
        /^[0-9a-f]+$/.test(id) && id.length === TOKEN_ID_LENGTH
          ? await sql.q<TokenRow>('SELECT * FROM enrollment_tokens WHERE substr(hash, 1, $1) = $2 FOR UPDATE', [TOKEN_ID_LENGTH, id])
          : [];
      const row = rows[0];
      if (!row || rows.length > 1 || row.revoked_at !== null) {
        throw new RegistryError('E_NO_TOKEN', `no enrollment token ${id} to revoke (unknown, or already revoked)`);
      }
      if (row.used_at !== null) {
        throw new RegistryError('E_TOKEN_USED', `enrollment token ${id} was already used (${new Date(row.used_at).toISOString()}); nothing to revoke`);
      }
      await sql.run('UPDATE enrollment_tokens SET revoked_at = $1 WHERE hash = $2', [now, row.hash]);
      await appendAudit(sql, now, 'token.revoke', row.device_id, { token_id: id, user_id: row.user_id, by });
      const listed = await sql.one<TokenListingRow>(`${SELECT} WHERE t.hash = $1`, [row.hash]);
      if (!listed) throw new RegistryError('E_NO_TOKEN', `no enrollment token ${id}`);
      return tokenListing(listed, now);
    });
  }

  enroll(input: EnrollInput): Promise<{ userId: string; repeated: boolean }> {
    return this.#db.tx(async (sql) => {
      const now = this.#now();
      // The token's row lock: a concurrent enrollment with it waits here, then sees it used.
      const row = await sql.one<TokenRow>('SELECT * FROM enrollment_tokens WHERE hash = $1 FOR UPDATE', [hashToken(input.token)]);
      if (!row) throw new RegistryError('E_TOKEN_INVALID', 'the enrollment token is unknown');
      if (row.used_at !== null) {
        // The same device repeating its enrollment (it missed our `request`) with the same keys: answer again, change nothing.
        const device = await getDevice(sql, input.deviceId);
        if (
          row.device_id === input.deviceId &&
          device?.state === 'enrolling' &&
          device.signing?.kid === input.signing.kid &&
          device.encryption?.kid === input.encryption.kid
        ) {
          await appendAudit(sql, now, 'device.enroll.repeat', input.deviceId, { enrollment_jti: input.enrollmentJti });
          return { userId: row.user_id, repeated: true };
        }
        throw new RegistryError('E_TOKEN_USED', `the enrollment token was already used (${new Date(row.used_at).toISOString()})`);
      }
      if (row.revoked_at !== null) throw new RegistryError('E_TOKEN_REVOKED', `the enrollment token was revoked (${new Date(row.revoked_at).toISOString()})`);
      if (row.expires_at <= now) throw new RegistryError('E_TOKEN_EXPIRED', `the enrollment token expired at ${new Date(row.expires_at).toISOString()}`);
      if (row.device_id !== input.deviceId) throw new RegistryError('E_TOKEN_DEVICE', `the enrollment token is bound to another device, not ${input.deviceId}`);
      const consumed = await sql.run(
        'UPDATE enrollment_tokens SET used_at = $1, used_by = $2 WHERE hash = $3 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $1',
        [now, input.enrollmentJti, row.hash],
      );
      if (consumed !== 1) throw new RegistryError('E_TOKEN_USED', 'the enrollment token was already used');
      // The device row (inserted or updated) stays locked until commit: its keys are read and replaced under the lock.
      await upsertDevice(sql, now, input.deviceId, row.user_id, 'enrolling', 'enrollment');
      const signingBefore = await sql.one<{ kid: string }>("SELECT kid FROM device_keys WHERE device_id = $1 AND use = 'sig' AND status = 'current'", [
        input.deviceId,
      ]);
      await sql.run('UPDATE devices SET enrolled_at = $1, decommissioned_at = NULL WHERE id = $2', [now, input.deviceId]);
      // New keys are a new identity, whose agent counts its report positions afresh (and its seq from 0).
      if (signingBefore?.kid !== input.signing.kid) {
        await sql.run('UPDATE devices SET report_run = NULL, report_n = NULL, presence_session = NULL, presence_conn = NULL, reported = NULL WHERE id = $1', [
          input.deviceId,
        ]);
      }
      await setCurrentKeys(sql, now, input.deviceId, input.signing, input.encryption);
      await appendAudit(sql, now, 'device.enroll', input.deviceId, {
        user_id: row.user_id,
        signing_kid: input.signing.kid,
        encryption_kid: input.encryption.kid,
        enrollment_jti: input.enrollmentJti,
      });
      return { userId: row.user_id, repeated: false };
    });
  }

  async listTokens(filter: { deviceId?: string } = {}): Promise<TokenListing[]> {
    const now = this.#now();
    const rows =
      filter.deviceId === undefined
        ? await this.#db.q<TokenListingRow>(`${SELECT} ORDER BY t.created_at DESC, t.device_id COLLATE "C"`)
        : await this.#db.q<TokenListingRow>(`${SELECT} WHERE t.device_id = $1 ORDER BY t.created_at DESC`, [filter.deviceId]);
    return rows.map((r) => tokenListing(r, now));
  }

  async pendingEnrollments(): Promise<TokenListing[]> {
    const now = this.#now();
    const rows = await this.#db.q<TokenListingRow>(
      `${SELECT} WHERE t.used_at IS NULL AND t.revoked_at IS NULL AND (d.enrolled_at IS NULL OR d.enrolled_at < t.created_at)
         AND t.created_at = (SELECT MAX(created_at) FROM enrollment_tokens u WHERE u.device_id = t.device_id)
       ORDER BY t.device_id COLLATE "C"`,
    );
    return rows.map((r) => tokenListing(r, now));
  }
}
