/**
 * The audit log in SQLite: appended in the transaction of the change it
 * records (appendAudit), read newest first, filtered (provision-server audit,
 * GET /audit: by device, by rollout (the rollout's own events and the commands
 * it sealed), by event (`command.ack`, or every `rollout.*` with `rollout`),
 * and by time; the indexes are migration 4's), and followed by the change log
 * (eventsSince, lastId).
 */
import { AUDIT_GENESIS, chainHash, verifyEntries, type ChainedEntry, type ChainHead, type ChainVerification } from '../audit-chain.js';
import { DEFAULT_AUDIT_LIMIT, type AuditFilter, type AuditRecord } from '../records.js';
import type { AuditStore } from '../types.js';
import type { SqliteDb } from './db.js';
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

const auditRecord = (r: AuditRow): AuditRecord => ({
  id: r.id,
  at: r.at,
  event: r.event,
  deviceId: r.device_id,
  detail: JSON.parse(r.detail) as Record<string, unknown>,
});

/**
 * Appends an audit row chained after the head (audit_head): its id is the
 * head's last_id + 1 and its prev_hash the head's hash; the head moves to it.
 * In the caller's transaction when in one (a savepoint), else in its own
 * IMMEDIATE one: the write lock is held from the head's read to the commit, so
 * no other process appends in between (one chain, ids in chain order).
 */
export function appendAudit(s: SqliteDb, event: string, deviceId: string | null, detail: Record<string, unknown> = {}): void {
  const text = JSON.stringify(detail);
  const at = s.now();
  s.immediate(() => {
    const head = readHead(s);
    const id = head.lastId + 1;
    const hash = chainHash(head.hash, { id, at, event, deviceId, detail: JSON.parse(text) as unknown });
    s.db
      .prepare('INSERT INTO audit (id, at, event, device_id, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(id, at, event, deviceId, text, head.hash, hash);
    s.db.prepare('UPDATE audit_head SET last_id = ?, hash = ? WHERE one = 1').run(id, hash);
  });
}

function readHead(s: SqliteDb): ChainHead {
  const row = s.db.prepare('SELECT last_id, hash FROM audit_head WHERE one = 1').get() as { last_id: number; hash: string } | undefined;
  return row ? { lastId: row.last_id, hash: row.hash } : { lastId: 0, hash: AUDIT_GENESIS };
}

const chained = (r: AuditRow): ChainedEntry => {
  const e: ChainedEntry = { id: r.id, at: r.at, event: r.event, deviceId: r.device_id, detail: null, prevHash: r.prev_hash ?? null, hash: r.hash ?? null };
  try {
    e.detail = JSON.parse(r.detail) as unknown;
  } catch {
    e.malformed = 'its detail is not JSON';
  }
  return e;
};

/** Devices per query when reading their keys. */
const KEY_BATCH = 500;

interface CheckpointRow {
  id: number;
  at: number;
  last_id: number;
  hash: string;
  jws: string;
}

const checkpointRecord = (r: CheckpointRow): CheckpointRecord => ({ id: Number(r.id), at: Number(r.at), lastId: Number(r.last_id), hash: r.hash, jws: r.jws });

export class SqliteAuditStore implements AuditStore {
  readonly #s: SqliteDb;

  constructor(s: SqliteDb) {
    this.#s = s;
  }

  async append(event: string, deviceId: string | null, detail: Record<string, unknown> = {}): Promise<void> {
    appendAudit(this.#s, event, deviceId, detail);
  }

  async log(options: { deviceId?: string; limit?: number } = {}): Promise<AuditRecord[]> {
    const db = this.#s.db;
    const rows = (
      options.deviceId === undefined
        ? db.prepare('SELECT * FROM audit ORDER BY id DESC LIMIT ?').all(options.limit ?? 100)
        : db.prepare('SELECT * FROM audit WHERE device_id = ? ORDER BY id DESC LIMIT ?').all(options.deviceId, options.limit ?? 100)
    ) as AuditRow[];
    return rows.reverse().map(auditRecord);
  }

  /** The newest `limit` audit rows matching `f`, oldest first. */
  async query(f: AuditFilter): Promise<AuditRecord[]> {
    const where: string[] = [];
    const args: (string | number)[] = [];
    if (f.deviceId !== undefined) {
      where.push('device_id = ?');
      args.push(f.deviceId);
    }
    if (f.rolloutId !== undefined) {
      // The expression of the index audit_rollout: a rollout's events carry rollout_id, the commands it sealed fanout_id.
      where.push("COALESCE(json_extract(detail, '$.rollout_id'), json_extract(detail, '$.fanout_id')) = ?");
      args.push(f.rolloutId);
    }
    if (f.event !== undefined) {
      where.push("(event = ? OR event LIKE ? ESCAPE '\\')");
      args.push(f.event, `${f.event.replace(/[\\%_]/g, (c) => `\\${c}`)}.%`);
    }
    if (f.since !== undefined) {
      where.push('at >= ?');
      args.push(f.since);
    }
    if (f.until !== undefined) {
      where.push('at <= ?');
      args.push(f.until);
    }
    const rows = this.#s.db
      .prepare(`SELECT * FROM audit ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`)
      .all(...args, f.limit ?? DEFAULT_AUDIT_LIMIT) as AuditRow[];
    return rows.reverse().map(auditRecord);
  }

  async lastId(): Promise<number> {
    return (this.#s.db.prepare('SELECT COALESCE(MAX(id), 0) AS id FROM audit').get() as { id: number }).id;
  }

  async eventsSince(afterId: number, upTo: number, prefix: string, limit: number): Promise<AuditRecord[]> {
    // Every event (the live event stream, GET /events): the id range only.
    if (prefix === '') {
      const all = this.#s.db
        .prepare('SELECT id, at, event, device_id, detail FROM audit WHERE id > ? AND id <= ? ORDER BY id LIMIT ?')
        .all(afterId, upTo, limit) as AuditRow[];
      return all.map(auditRecord);
    }
    // A range on the audit_event index (LIKE would not use it): prefix <= event < prefix with its last character + 1.
    const end = prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
    const rows = this.#s.db
      .prepare('SELECT id, at, event, device_id, detail FROM audit WHERE event >= ? AND event < ? AND id > ? AND id <= ? ORDER BY id LIMIT ?')
      .all(prefix, end, afterId, upTo, limit) as AuditRow[];
    return rows.map(auditRecord);
  }

  async verifyChain(from?: number, to?: number): Promise<ChainVerification> {
    const db = this.#s.db;
    return verifyEntries(
      {
        hashBefore: async (id) =>
          (db.prepare('SELECT hash FROM audit WHERE id < ? ORDER BY id DESC LIMIT 1').get(id) as { hash: string | null } | undefined)?.hash ?? undefined,
        batch: async (afterId, upTo, limit) =>
          (db.prepare('SELECT * FROM audit WHERE id > ? AND id <= ? ORDER BY id LIMIT ?').all(afterId, upTo, limit) as AuditRow[]).map(chained),
        head: async () => readHead(this.#s),
      },
      from,
      to,
    );
  }

  async head(): Promise<ChainHead> {
    return readHead(this.#s);
  }

  async entries(afterId: number, limit: number): Promise<ChainedEntry[]> {
    return (this.#s.db.prepare('SELECT * FROM audit WHERE id > ? ORDER BY id LIMIT ?').all(afterId, limit) as AuditRow[]).map(chained);
  }

  async addCheckpoint(c: Omit<CheckpointRecord, 'id'>): Promise<CheckpointRecord> {
    const r = this.#s.db
      .prepare('INSERT INTO audit_checkpoints (at, last_id, hash, jws) VALUES (?, ?, ?, ?) RETURNING *')
      .get(c.at, c.lastId, c.hash, c.jws) as CheckpointRow;
    return checkpointRecord(r);
  }

  async checkpoints(): Promise<CheckpointRecord[]> {
    return (this.#s.db.prepare('SELECT * FROM audit_checkpoints ORDER BY id').all() as CheckpointRow[]).map(checkpointRecord);
  }

  async deviceSigningKeys(deviceIds: readonly string[]): Promise<Map<string, PublicJwk[]>> {
    const rows: { device_id: string; jwk: string }[] = [];
    for (let i = 0; i < deviceIds.length; i += KEY_BATCH) {
      const ids = deviceIds.slice(i, i + KEY_BATCH);
      const sql = `SELECT device_id, jwk FROM device_keys WHERE use = 'sig' AND device_id IN (${ids.map(() => '?').join(', ')}) ORDER BY device_id, added_at`;
      rows.push(...(this.#s.db.prepare(sql).all(...ids) as { device_id: string; jwk: string }[]));
    }
    return groupKeys(rows);
  }

  async devicesWithEvents(events: readonly string[], upTo: number): Promise<string[]> {
    const sql = `SELECT DISTINCT device_id FROM audit WHERE event IN (${events.map(() => '?').join(', ')}) AND id <= ? AND device_id IS NOT NULL ORDER BY device_id`;
    return (this.#s.db.prepare(sql).all(...events, upTo) as { device_id: string }[]).map((r) => r.device_id);
  }
}
