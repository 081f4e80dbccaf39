/**
 * The audit log in PostgreSQL (append-only: the table's triggers refuse
 * UPDATE, DELETE and TRUNCATE). Reading it as server/storage/sqlite/audit.ts
 * does (log, query); the rollout filter uses the expression of the index
 * audit_rollout.
 */
import { chainHash, verifyEntries, type ChainedEntry, type ChainHead, type ChainVerification } from '../audit-chain.js';
import { DEFAULT_AUDIT_LIMIT, type AuditFilter, type AuditRecord } from '../records.js';
import type { AuditStore } from '../types.js';
import { atCommit, PgDb, type Sql } from './db.js';
import type { CheckpointRecord } from '../../audit/checkpoint.js';
import type { PublicJwk } from '../../../protocol/index.js';
import { groupKeys } from '../rows.js';

interface AuditRow {
  id: number;
  at: number;
  event: string;
  device_id: string | null;
  detail: string;
  prev_hash?: string | null;
  hash?: string | null;
}

const record = (r: AuditRow): AuditRecord => ({
  id: r.id,
  at: r.at,
  event: r.event,
  deviceId: r.device_id,
  detail: JSON.parse(r.detail) as Record<string, unknown>,
});

/**
 * Appends one audit row chained after the head. Inside the caller's
 * transaction (`sql` from PgDb.tx) the row is written at its end, just before
 * COMMIT (atCommit: the head's lock is the last taken and held shortest, so
 * two transactions never wait on each other's locks around it); on the pool
 * (PgDb), in a transaction of its own. `detail` is serialized now.
 */
export async function appendAudit(sql: Sql, at: number, event: string, deviceId: string | null, detail: Record<string, unknown> = {}): Promise<void> {
  const text = JSON.stringify(detail);
  if (sql instanceof PgDb) return sql.tx(async (tx) => chainAppend(tx, at, event, deviceId, text));
  atCommit(sql, () => chainAppend(sql, at, event, deviceId, text));
}

/**
 * Locks the audit_head row (FOR UPDATE, held to COMMIT), inserts the row with
 * id last_id + 1 and prev_hash the head's hash, and moves the head to it:
 * every appender waits for the head, so there is one chain and ids commit in
 * chain order, whatever the number of serve processes.
 */
async function chainAppend(sql: Sql, at: number, event: string, deviceId: string | null, text: string): Promise<void> {
  const head = await sql.one<{ last_id: number; hash: string }>('SELECT last_id, hash FROM audit_head WHERE one = 1 FOR UPDATE');
  if (!head) throw new Error('the registry has no audit_head row (schema migration 2 missing)');
  const id = Number(head.last_id) + 1;
  const hash = chainHash(head.hash, { id, at, event, deviceId, detail: JSON.parse(text) as unknown });
  await sql.run(
    'WITH ins AS (INSERT INTO audit (id, at, event, device_id, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7)) UPDATE audit_head SET last_id = $1, hash = $7 WHERE one = 1',
    [id, at, event, deviceId, text, head.hash, hash],
  );
}

const chained = (r: AuditRow): ChainedEntry => {
  const e: ChainedEntry = {
    id: Number(r.id),
    at: Number(r.at),
    event: r.event,
    deviceId: r.device_id,
    detail: null,
    prevHash: r.prev_hash ?? null,
    hash: r.hash ?? null,
  };
  try {
    e.detail = JSON.parse(r.detail) as unknown;
  } catch {
    e.malformed = 'its detail is not JSON';
  }
  return e;
};

interface CheckpointRow {
  id: number;
  at: number;
  last_id: number;
  hash: string;
  jws: string;
}

const checkpointRecord = (r: CheckpointRow): CheckpointRecord => ({ id: Number(r.id), at: Number(r.at), lastId: Number(r.last_id), hash: r.hash, jws: r.jws });

export class PgAuditStore implements AuditStore {
  readonly #db: PgDb;
  readonly #now: () => number;

  constructor(db: PgDb, now: () => number) {
    this.#db = db;
    this.#now = now;
  }

  append(event: string, deviceId: string | null, detail: Record<string, unknown> = {}): Promise<void> {
    return appendAudit(this.#db, this.#now(), event, deviceId, detail);
  }

  async log(options: { deviceId?: string; limit?: number } = {}): Promise<AuditRecord[]> {
    const rows =
      options.deviceId === undefined
        ? await this.#db.q<AuditRow>('SELECT * FROM audit ORDER BY id DESC LIMIT $1', [options.limit ?? 100])
        : await this.#db.q<AuditRow>('SELECT * FROM audit WHERE device_id = $1 ORDER BY id DESC LIMIT $2', [options.deviceId, options.limit ?? 100]);
    return rows.reverse().map(record);
  }

  async query(f: AuditFilter): Promise<AuditRecord[]> {
    const where: string[] = [];
    const args: (string | number)[] = [];
    const arg = (v: string | number): string => {
      args.push(v);
      return `$${args.length}`;
    };
    if (f.deviceId !== undefined) where.push(`device_id = ${arg(f.deviceId)}`);
    // The expression of the index audit_rollout: a rollout's events carry rollout_id, the commands it sealed fanout_id.
    if (f.rolloutId !== undefined) where.push(`COALESCE(detail::jsonb ->> 'rollout_id', detail::jsonb ->> 'fanout_id') = ${arg(f.rolloutId)}`);
    if (f.event !== undefined) {
      where.push(`(event = ${arg(f.event)} OR event LIKE ${arg(`${f.event.replace(/[\\%_]/g, (c) => `\\${c}`)}.%`)} ESCAPE '\\')`);
    }
    if (f.since !== undefined) where.push(`at >= ${arg(f.since)}`);
    if (f.until !== undefined) where.push(`at <= ${arg(f.until)}`);
    const limit = arg(f.limit ?? DEFAULT_AUDIT_LIMIT);
    const rows = await this.#db.q<AuditRow>(`SELECT * FROM audit ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ${limit}`, args);
    return rows.reverse().map(record);
  }

  async lastId(): Promise<number> {
    return (await this.#db.one<{ id: number }>('SELECT COALESCE(MAX(id), 0)::bigint AS id FROM audit'))?.id ?? 0;
  }

  async eventsSince(afterId: number, upTo: number, prefix: string, limit: number): Promise<AuditRecord[]> {
    const rows = await this.#db.q<AuditRow>('SELECT * FROM audit WHERE id > $1 AND id <= $2 AND starts_with(event, $3) ORDER BY id LIMIT $4', [
      afterId,
      upTo,
      prefix,
      limit,
    ]);
    return rows.map(record);
  }

  async verifyChain(from?: number, to?: number): Promise<ChainVerification> {
    const db = this.#db;
    return verifyEntries(
      {
        hashBefore: async (id) => (await db.one<{ hash: string }>('SELECT hash FROM audit WHERE id < $1 ORDER BY id DESC LIMIT 1', [id]))?.hash,
        batch: async (afterId, upTo, limit) =>
          (await db.q<AuditRow>('SELECT * FROM audit WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3', [afterId, upTo, limit])).map(chained),
        head: async (): Promise<ChainHead> => {
          const h = await db.one<{ last_id: number; hash: string }>('SELECT last_id, hash FROM audit_head WHERE one = 1');
          if (!h) throw new Error('the registry has no audit_head row (schema migration 2 missing)');
          return { lastId: Number(h.last_id), hash: h.hash };
        },
      },
      from,
      to,
    );
  }

  async head(): Promise<ChainHead> {
    const h = await this.#db.one<{ last_id: number; hash: string }>('SELECT last_id, hash FROM audit_head WHERE one = 1');
    if (!h) throw new Error('the registry has no audit_head row (schema migration 2 missing)');
    return { lastId: Number(h.last_id), hash: h.hash };
  }

  async entries(afterId: number, limit: number): Promise<ChainedEntry[]> {
    return (await this.#db.q<AuditRow>('SELECT * FROM audit WHERE id > $1 ORDER BY id LIMIT $2', [afterId, limit])).map(chained);
  }

  async addCheckpoint(c: Omit<CheckpointRecord, 'id'>): Promise<CheckpointRecord> {
    const r = await this.#db.one<CheckpointRow>('INSERT INTO audit_checkpoints (at, last_id, hash, jws) VALUES ($1, $2, $3, $4) RETURNING *', [
      c.at,
      c.lastId,
      c.hash,
      c.jws,
    ]);
    if (!r) throw new Error('the checkpoint insert returned no row');
    return checkpointRecord(r);
  }

  async checkpoints(): Promise<CheckpointRecord[]> {
    return (await this.#db.q<CheckpointRow>('SELECT * FROM audit_checkpoints ORDER BY id')).map(checkpointRecord);
  }

  async deviceSigningKeys(deviceIds: readonly string[]): Promise<Map<string, PublicJwk[]>> {
    return groupKeys(
      await this.#db.q<{ device_id: string; jwk: string }>(
        "SELECT device_id, jwk FROM device_keys WHERE use = 'sig' AND device_id = ANY($1::text[]) ORDER BY device_id, added_at",
        [[...deviceIds]],
      ),
    );
  }

  async devicesWithEvents(events: readonly string[], upTo: number): Promise<string[]> {
    const rows = await this.#db.q<{ device_id: string }>(
      'SELECT DISTINCT device_id FROM audit WHERE event = ANY($1::text[]) AND id <= $2 AND device_id IS NOT NULL ORDER BY device_id',
      [[...events], upTo],
    );
    return rows.map((r) => r.device_id);
  }
}
