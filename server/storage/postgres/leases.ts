/**
 * The engine lease in PostgreSQL (see Lease in server/storage/records.ts):
 * one row per name with its holder, expiry and generation (the fencing token).
 * Taking it is one `INSERT ... ON CONFLICT DO UPDATE ... WHERE` (the row is
 * locked and its latest version decides), so two machines racing for it never
 * both get it, and the generation grows only when a holder that did not hold
 * it live takes it. Renewing and releasing are single conditional UPDATEs.
 */
import type { Lease } from '../records.js';
import type { LeaseStore } from '../types.js';
import type { PgDb, Sql } from './db.js';

/**
 * Renews `lease` for its ttl when it is still held, unexpired (never one that
 * lapsed or changed hands: its holder must take it again, a new generation).
 */
export async function renewLease(sql: Sql, lease: Lease, now: number): Promise<boolean> {
  return (
    (await sql.run('UPDATE leases SET expires_at = GREATEST(expires_at, $1::bigint) WHERE name = $2 AND holder = $3 AND generation = $4 AND expires_at > $5', [
      now + lease.ttlMs,
      lease.name,
      lease.holder,
      lease.generation,
      now,
    ])) === 1
  );
}

export class PgLeaseStore implements LeaseStore {
  readonly #db: PgDb;
  readonly #now: () => number;

  constructor(db: PgDb, now: () => number) {
    this.#db = db;
    this.#now = now;
  }

  /**
   * Takes or renews the lease `name` for `holder` until now + ttlMs; undefined
   * while another holder's lease is live. Renewing a live lease keeps its
   * generation; taking it (from another holder, or after it lapsed, even one's
   * own) makes a new one, so every claim made under the old one is fenced out.
   */
  async take(name: string, holder: string, ttlMs: number): Promise<Lease | undefined> {
    const now = this.#now();
    const row = await this.#db.one<{ generation: number }>(
      `INSERT INTO leases AS l (name, holder, expires_at, generation) VALUES ($1, $2, $3, 1)
       ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at,
         generation = CASE WHEN l.holder = excluded.holder AND l.expires_at > $4 THEN l.generation ELSE l.generation + 1 END
       WHERE l.holder = excluded.holder OR l.expires_at <= $4
       RETURNING generation`,
      [name, holder, now + ttlMs, now],
    );
    return row ? { name, holder, generation: Number(row.generation), ttlMs } : undefined;
  }

  renew(lease: Lease): Promise<boolean> {
    return renewLease(this.#db, lease, this.#now());
  }

  /** Lets the lease lapse now (its row and generation stay: generations only grow). */
  async release(name: string, holder: string): Promise<void> {
    await this.#db.run('UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2', [name, holder]);
  }

  /** The live holder of a lease, if any. */
  async holder(name: string): Promise<string | undefined> {
    const row = await this.#db.one<{ holder: string }>('SELECT holder FROM leases WHERE name = $1 AND expires_at > $2', [name, this.#now()]);
    return row?.holder;
  }
}
