/**
 * The engine lease in SQLite: its holder and generation (the fencing token,
 * grown each time the lease is taken by a holder that did not hold it live).
 * Every claim and mark-sent of rollouts.ts checks it (LEASE_HELD) in its own
 * transaction.
 */
import type Database from 'better-sqlite3';
import type { Lease } from '../records.js';
import type { LeaseStore } from '../types.js';
import type { SqliteDb } from './db.js';

/** The SQL condition that `lease` is still held (bind with leaseArgs). */
export const LEASE_HELD = 'EXISTS (SELECT 1 FROM leases WHERE name = ? AND holder = ? AND generation = ? AND expires_at > ?)';
export const leaseArgs = (lease: Lease, now: number): (string | number)[] => [lease.name, lease.holder, lease.generation, now];

/** Renews `lease` for its ttl when it is still held, unexpired (in the caller's transaction, when in one). */
export function renewLease(db: Database.Database, lease: Lease, now: number): boolean {
  return (
    db
      .prepare('UPDATE leases SET expires_at = MAX(expires_at, ?) WHERE name = ? AND holder = ? AND generation = ? AND expires_at > ?')
      .run(now + lease.ttlMs, lease.name, lease.holder, lease.generation, now).changes === 1
  );
}

/** Whether `lease` is still held, unexpired. */
export function leaseHeld(s: SqliteDb, lease: Lease): boolean {
  const row = s.db.prepare(`SELECT ${LEASE_HELD} AS held`).get(...leaseArgs(lease, s.now())) as { held: number };
  return row.held === 1;
}

export class SqliteLeaseStore implements LeaseStore {
  readonly #s: SqliteDb;

  constructor(s: SqliteDb) {
    this.#s = s;
  }

  /**
   * Takes or renews the lease `name` for `holder` until now + ttlMs; undefined
   * while another holder's lease is live. Renewing a live lease keeps its
   * generation; taking it (from another holder, or after it lapsed, even one's
   * own) makes a new one, so every claim made under the old one is fenced out.
   */
  async take(name: string, holder: string, ttlMs: number): Promise<Lease | undefined> {
    return this.#s.db
      .transaction((): Lease | undefined => {
        const now = this.#s.now();
        const row = this.#s.db.prepare('SELECT holder, expires_at, generation FROM leases WHERE name = ?').get(name) as
          { holder: string; expires_at: number; generation: number } | undefined;
        if (row && row.holder !== holder && row.expires_at > now) return undefined;
        const generation = row && row.holder === holder && row.expires_at > now ? row.generation : (row?.generation ?? 0) + 1;
        this.#s.db
          .prepare(
            `INSERT INTO leases (name, holder, expires_at, generation) VALUES (?, ?, ?, ?)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, generation = excluded.generation`,
          )
          .run(name, holder, now + ttlMs, generation);
        return { name, holder, generation, ttlMs };
      })
      .immediate();
  }

  /**
   * Whether `lease` is still held, unexpired (checked again right before
   * publishing); if so it is renewed for its ttl. A lease that lapsed or
   * changed hands is never renewed here: its holder must take it again (a new
   * generation).
   */
  async renew(lease: Lease): Promise<boolean> {
    return renewLease(this.#s.db, lease, this.#s.now());
  }

  /** Lets the lease lapse now (its row and generation stay: generations only grow). */
  async release(name: string, holder: string): Promise<void> {
    this.#s.db.prepare('UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ?').run(name, holder);
  }

  /** The live holder of a lease, if any. */
  async holder(name: string): Promise<string | undefined> {
    const row = this.#s.db.prepare('SELECT holder, expires_at FROM leases WHERE name = ?').get(name) as { holder: string; expires_at: number } | undefined;
    return row && row.expires_at > this.#s.now() ? row.holder : undefined;
  }
}
