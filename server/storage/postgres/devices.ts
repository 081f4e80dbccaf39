/**
 * Devices, their keys and tags in PostgreSQL, as server/storage/sqlite/devices.ts
 * keeps them in SQLite (same rows, errors and audit events). A change that
 * decides on what it read first holds the device's row lock (SELECT ... FOR
 * UPDATE, or the lock of the INSERT ... ON CONFLICT / UPDATE doing it).
 *
 * The helpers exported here (rows to records, keys made current, the device
 * row upsert) are shared with enrollment.ts, seq.ts and commands.ts.
 */
import { reportPosition, type PublicJwk, type ReportClaims } from '../../../protocol/index.js';
import { RegistryError, unknownDevices } from '../errors.js';
import type { DeviceOrigin, DeviceRecord, DeviceState, NewDevice, ReportRecordOutcome, ReportedState } from '../records.js';
import { commandRecord, deviceRecord, keyRecord, type CommandRow, type DeviceRow, type KeyRow } from '../rows.js';
import { PREVIOUS_KEY_GRACE_MS, VERSION_REPORTED_EVENT, assertTag, nextReportedState, reportNotNewer, versionChange } from '../rules.js';
import { pageOrder, pageWhere, type PageDialect } from '../device-page.js';
import { PRESENCE_EVENT, presenceAuditDetail, presenceChanges } from '../presence-changes.js';
import type { DeviceListFilter, DevicePageItem, DevicePageQuery, DeviceStore, PresenceChange } from '../types.js';
import { appendAudit } from './audit.js';
import type { PgDb, Sql } from './db.js';

export const noDevice = (id: string): RegistryError => new RegistryError('E_NO_DEVICE', `device ${id} is not registered`);

/** A device row with its keys (oldest first) and tags, as DEVICE_SELECT reads them. */
export interface DeviceRowWith extends DeviceRow {
  keys_json: Omit<KeyRow, 'device_id'>[];
  tags_arr: string[];
}

/** Devices `d` with their keys and tags, in one statement (append WHERE ... and, to lock, FOR UPDATE OF d). */
export const DEVICE_SELECT = `SELECT d.*,
  (SELECT COALESCE(json_agg(json_build_object('kid', k.kid, 'use', k.use, 'jwk', k.jwk, 'status', k.status, 'added_at', k.added_at,
      'retired_at', k.retired_at) ORDER BY k.added_at, k.kid COLLATE "C"), '[]'::json)
    FROM device_keys k WHERE k.device_id = d.id) AS keys_json,
  (SELECT COALESCE(array_agg(t.tag ORDER BY t.tag COLLATE "C"), '{}'::text[]) FROM device_tags t WHERE t.device_id = d.id) AS tags_arr
  FROM devices d`;

export function deviceRecordOf(row: DeviceRowWith): DeviceRecord {
  return deviceRecord(row, row.keys_json.map(keyRecord), row.tags_arr);
}

/** The device, or undefined; `lock`: holding its row lock until the transaction ends. */
export async function getDevice(sql: Sql, id: string, lock = false): Promise<DeviceRecord | undefined> {
  const row = await sql.one<DeviceRowWith>(`${DEVICE_SELECT} WHERE d.id = $1${lock ? ' FOR UPDATE OF d' : ''}`, [id]);
  return row ? deviceRecordOf(row) : undefined;
}

export async function requireDevice(sql: Sql, id: string, lock = false): Promise<DeviceRecord> {
  const d = await getDevice(sql, id, lock);
  if (!d) throw noDevice(id);
  return d;
}

/** Inserts the device, or updates the one there (flag cleared), holding its row lock. */
export async function upsertDevice(sql: Sql, now: number, id: string, userId: string | null, state: DeviceState, origin: DeviceOrigin): Promise<void> {
  await sql.run(
    `INSERT INTO devices (id, user_id, state, origin, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)
     ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, state = excluded.state, origin = excluded.origin, updated_at = excluded.updated_at,
       flagged_at = NULL, flag = NULL`,
    [id, userId, state, origin, now],
  );
}

/** Makes these keys current; the keys they replace become `previous` (signing: verifies in-flight acks for a grace period). */
export async function setCurrentKeys(sql: Sql, now: number, id: string, signing: PublicJwk | undefined, encryption: PublicJwk): Promise<void> {
  await sql.run("UPDATE device_keys SET status = 'retired' WHERE device_id = $1 AND status = 'previous'", [id]);
  await sql.run("UPDATE device_keys SET status = 'previous', retired_at = $1 WHERE device_id = $2 AND status = 'current'", [now, id]);
  const insert = `INSERT INTO device_keys (device_id, kid, use, jwk, status, added_at) VALUES ($1, $2, $3, $4, 'current', $5)
    ON CONFLICT (device_id, kid) DO UPDATE SET status = 'current', retired_at = NULL, jwk = excluded.jwk`;
  if (signing) await sql.run(insert, [id, signing.kid, 'sig', JSON.stringify(signing), now]);
  await sql.run(insert, [id, encryption.kid, 'enc', JSON.stringify(encryption), now]);
}

interface PresenceRow {
  id: number;
  device_id: string;
  at: number;
  presence: 'online' | 'offline';
  reason: string;
  session: string | null;
  conn: number | null;
}

export class PgDeviceStore implements DeviceStore {
  readonly #db: PgDb;
  readonly #now: () => number;

  constructor(db: PgDb, now: () => number) {
    this.#db = db;
    this.#now = now;
  }

  get(id: string): Promise<DeviceRecord | undefined> {
    return getDevice(this.#db, id);
  }

  require(id: string): Promise<DeviceRecord> {
    return requireDevice(this.#db, id);
  }

  /**
   * A page of the fleet: filters, sort, count and paging in SQL (server/storage/device-page.ts), the page's ids,
   * their rows with keys and tags in one statement, their last commands in one more; one REPEATABLE READ snapshot.
   */
  async page(query: DevicePageQuery): Promise<{ total: number; items: DevicePageItem[] }> {
    const dialect = (): PageDialect & { args: unknown[] } => {
      const args: unknown[] = [];
      return {
        args,
        p: (v) => {
          args.push(v);
          return `$${args.length}`;
        },
        version: "COALESCE(d.agent_version, d.reported::jsonb ->> 'agent_version')",
        position: (h, n) => `strpos(${h}, ${n})`,
      };
    };
    return this.#db.tx(async (sql) => {
      await sql.run('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY');
      const c = dialect();
      const total = (await sql.one<{ n: number }>(`SELECT COUNT(*) AS n FROM devices d ${pageWhere(c, query)}`, c.args))?.n ?? 0;
      const r = dialect();
      const where = pageWhere(r, query);
      // The page's ids first, then their rows with keys and tags: OFFSET would otherwise build (and drop) the skipped rows' keys and tags.
      const ids = (await sql.q<{ id: string }>(`SELECT d.id FROM devices d ${where} ${pageOrder(r, query)}`, r.args)).map((x) => x.id);
      const byId = new Map((await sql.q<DeviceRowWith>(`${DEVICE_SELECT} WHERE d.id = ANY($1::text[])`, [ids])).map((row) => [row.id, row]));
      const rows = ids.flatMap((id) => byId.get(id) ?? []);
      const last = await sql.q<CommandRow>(
        `SELECT DISTINCT ON (device_id) * FROM commands WHERE device_id = ANY($1::text[]) ORDER BY device_id, created_at DESC, seq DESC`,
        [rows.map((row) => row.id)],
      );
      const byDevice = new Map(last.map((row) => [row.device_id, commandRecord(row)]));
      return { total, items: rows.map((row) => ({ device: deviceRecordOf(row), lastCommand: byDevice.get(row.id) ?? null })) };
    });
  }

  async list(filter: DeviceListFilter = {}): Promise<DeviceRecord[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (filter.userId !== undefined) {
      args.push(filter.userId);
      where.push(`d.user_id = $${args.length}`);
    }
    if (filter.tag !== undefined) {
      // A tag no device can carry is a typo, not an empty selection (send --tag, GET /devices?tag=).
      assertTag(filter.tag);
      args.push(filter.tag);
      where.push(`d.id IN (SELECT device_id FROM device_tags WHERE tag = $${args.length})`);
    }
    if (filter.states !== undefined) {
      args.push([...filter.states]);
      where.push(`d.state = ANY($${args.length})`);
    }
    const rows = await this.#db.q<DeviceRowWith>(`${DEVICE_SELECT} ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY d.id COLLATE "C"`, args);
    return rows.map(deviceRecordOf);
  }

  async add(input: NewDevice, options: { replace?: boolean } = {}): Promise<DeviceRecord> {
    return this.#db.tx(async (sql) => {
      const now = this.#now();
      if (options.replace) {
        await upsertDevice(sql, now, input.id, input.userId, input.state ?? 'registered', input.origin);
      } else {
        // Inserted only when absent, atomically: two adds of one id never both succeed.
        const inserted = await sql.one(
          `INSERT INTO devices (id, user_id, state, origin, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO NOTHING RETURNING id`,
          [input.id, input.userId, input.state ?? 'registered', input.origin, now],
        );
        if (!inserted) {
          const existing = await sql.one<{ state: DeviceState }>('SELECT state FROM devices WHERE id = $1', [input.id]);
          throw new RegistryError(
            'E_DEVICE_EXISTS',
            `device ${input.id} is already registered (${existing?.state ?? 'registered'}); remove it first or pass --replace`,
          );
        }
      }
      await setCurrentKeys(sql, now, input.id, input.signing, input.encryption);
      await appendAudit(sql, now, 'device.add', input.id, {
        origin: input.origin,
        user_id: input.userId,
        signing_kid: input.signing?.kid ?? null,
        encryption_kid: input.encryption.kid,
      });
      return requireDevice(sql, input.id);
    });
  }

  async remove(id: string): Promise<void> {
    await this.#db.tx(async (sql) => {
      const gone = await sql.run('DELETE FROM devices WHERE id = $1', [id]);
      if (gone !== 1) throw noDevice(id);
      await sql.run('DELETE FROM enrollment_tokens WHERE device_id = $1 AND used_at IS NULL', [id]);
      await appendAudit(sql, this.#now(), 'device.remove', id);
    });
  }

  async addTags(deviceId: string, tags: readonly string[], by?: string): Promise<string[]> {
    for (const t of tags) assertTag(t);
    return this.#db.tx(async (sql) => {
      await this.#lockDevice(sql, deviceId);
      const added: string[] = [];
      for (const t of tags) {
        const n = await sql.run('INSERT INTO device_tags (device_id, tag, added_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING', [deviceId, t, this.#now()]);
        if (n === 1) added.push(t);
      }
      if (added.length) await appendAudit(sql, this.#now(), 'device.tag.add', deviceId, { tags: added, ...(by !== undefined ? { by } : {}) });
      return tagsOf(sql, deviceId);
    });
  }

  async removeTags(deviceId: string, tags: readonly string[], by?: string): Promise<string[]> {
    for (const t of tags) assertTag(t);
    return this.#db.tx(async (sql) => {
      await this.#lockDevice(sql, deviceId);
      const removed: string[] = [];
      for (const t of tags) if ((await sql.run('DELETE FROM device_tags WHERE device_id = $1 AND tag = $2', [deviceId, t])) === 1) removed.push(t);
      if (removed.length) await appendAudit(sql, this.#now(), 'device.tag.remove', deviceId, { tags: removed, ...(by !== undefined ? { by } : {}) });
      return tagsOf(sql, deviceId);
    });
  }

  async presenceHistory(deviceId: string, limit = 100): Promise<PresenceChange[]> {
    await requireDevice(this.#db, deviceId);
    const rows = await this.#db.q<PresenceRow>(
      'SELECT id, device_id, at, presence, reason, session, conn FROM device_presence WHERE device_id = $1 ORDER BY id DESC LIMIT $2',
      [deviceId, limit],
    );
    return rows.map((r) => ({ id: r.id, deviceId: r.device_id, at: r.at, presence: r.presence, reason: r.reason, session: r.session, conn: r.conn }));
  }

  /** As server/storage/sqlite/devices.ts bulkTags: the devices' rows locked in id order (no deadlock between two bulk taggings), one transaction. */
  async bulkTags(deviceIds: readonly string[], add: readonly string[], remove: readonly string[], by: string): Promise<{ deviceId: string; tags: string[] }[]> {
    for (const t of [...add, ...remove]) assertTag(t);
    return this.#db.tx(async (sql) => {
      const found = new Set(
        (await sql.q<{ id: string }>('SELECT id FROM devices WHERE id = ANY($1::text[]) ORDER BY id COLLATE "C" FOR UPDATE', [[...deviceIds]])).map(
          (r) => r.id,
        ),
      );
      const unknown = deviceIds.filter((id) => !found.has(id));
      if (unknown.length) throw unknownDevices(unknown);
      const now = this.#now();
      const out: { deviceId: string; tags: string[] }[] = [];
      for (const id of deviceIds) {
        const added = add.length
          ? (
              await sql.q<{ tag: string }>(
                'INSERT INTO device_tags (device_id, tag, added_at) SELECT $1, t, $3 FROM unnest($2::text[]) AS t ON CONFLICT DO NOTHING RETURNING tag',
                [id, [...add], now],
              )
            ).map((r) => r.tag)
          : [];
        const removed = remove.length
          ? (await sql.q<{ tag: string }>('DELETE FROM device_tags WHERE device_id = $1 AND tag = ANY($2::text[]) RETURNING tag', [id, [...remove]])).map(
              (r) => r.tag,
            )
          : [];
        // In the order asked (as SQLite's), not the database's.
        if (added.length) await appendAudit(sql, now, 'device.tag.add', id, { tags: add.filter((t) => added.includes(t)), by });
        if (removed.length) await appendAudit(sql, now, 'device.tag.remove', id, { tags: remove.filter((t) => removed.includes(t)), by });
        out.push({ deviceId: id, tags: await tagsOf(sql, id) });
      }
      return out;
    });
  }

  tagsOf(deviceId: string): Promise<string[]> {
    return tagsOf(this.#db, deviceId);
  }

  listTags(): Promise<{ tag: string; devices: number }[]> {
    return this.#db.q<{ tag: string; devices: number }>('SELECT tag, COUNT(*) AS devices FROM device_tags GROUP BY tag ORDER BY tag COLLATE "C"');
  }

  /** As server/storage/sqlite/devices.ts recordReport, under the device's row lock. */
  recordReport(deviceId: string, claims: ReportClaims, signed?: string): Promise<ReportRecordOutcome> {
    return this.#db.tx(async (sql): Promise<ReportRecordOutcome> => {
      const row = await sql.one<DeviceRow>('SELECT * FROM devices WHERE id = $1 FOR UPDATE', [deviceId]);
      if (!row) throw noDevice(deviceId);
      const notNewer = reportNotNewer(row, claims);
      if (notNewer) return { kind: notNewer };
      const position = reportPosition(claims);
      const now = this.#now();
      const state = JSON.stringify(nextReportedState(row.reported === null ? null : (JSON.parse(row.reported) as ReportedState), claims));
      const run = position?.run ?? null;
      const rank = position?.rank ?? null;
      const changes = presenceChanges(row, claims, now);
      const moved = presenceAuditDetail(changes, claims, signed);
      if (moved) await appendAudit(sql, now, PRESENCE_EVENT, deviceId, moved);
      for (const c of changes) {
        await sql.run('INSERT INTO device_presence (device_id, at, presence, reason, session, conn) VALUES ($1, $2, $3, $4, $5, $6)', [
          deviceId,
          c.at,
          c.presence,
          c.reason,
          c.session,
          c.conn,
        ]);
      }
      if (claims.reason === 'offline') {
        await sql.run(
          `UPDATE devices SET presence = 'offline', presence_session = $1, presence_conn = $2, report_run = $3, report_n = $4,
             reported = $5, reported_at = $6, last_report_jti = $7 WHERE id = $8`,
          [claims.session, claims.conn, run, rank, state, now, claims.jti, deviceId],
        );
        return { kind: 'recorded', presence: 'offline' };
      }
      await sql.run(
        `UPDATE devices SET presence = 'online', last_seen_at = $1, presence_session = $2, presence_conn = $3, report_run = $4, report_n = $5,
           report_interval_s = $6, reported = $7, reported_at = $8, last_report_jti = $9, agent_version = $10, arch = COALESCE($11, arch) WHERE id = $12`,
        [now, claims.session, claims.conn, run, rank, claims.interval_s, state, now, claims.jti, claims.agent_version, claims.arch ?? null, deviceId],
      );
      const changed = versionChange(row.agent_version, claims, signed);
      if (changed) await appendAudit(sql, now, VERSION_REPORTED_EVENT, deviceId, changed);
      return { kind: 'recorded', presence: 'online' };
    });
  }

  async verificationKeys(id: string): Promise<PublicJwk[]> {
    const cutoff = this.#now() - PREVIOUS_KEY_GRACE_MS;
    const rows = await this.#db.q<{ jwk: string }>(
      "SELECT jwk FROM device_keys WHERE device_id = $1 AND use = 'sig' AND (status = 'current' OR retired_at >= $2)",
      [id, cutoff],
    );
    return rows.map((r) => JSON.parse(r.jwk) as PublicJwk);
  }

  async reportVerificationKeys(id: string): Promise<PublicJwk[]> {
    const cutoff = this.#now() - PREVIOUS_KEY_GRACE_MS;
    const rows = await this.#db.q<{ jwk: string }>(
      `SELECT k.jwk FROM device_keys k JOIN devices d ON d.id = k.device_id
       WHERE k.device_id = $1 AND k.use = 'sig' AND (k.status = 'current' OR (k.retired_at >= $2 AND k.added_at >= COALESCE(d.enrolled_at, 0)))`,
      [id, cutoff],
    );
    return rows.map((r) => JSON.parse(r.jwk) as PublicJwk);
  }

  async #lockDevice(sql: Sql, id: string): Promise<void> {
    if (!(await sql.one('SELECT id FROM devices WHERE id = $1 FOR UPDATE', [id]))) throw noDevice(id);
  }
}

async function tagsOf(sql: Sql, deviceId: string): Promise<string[]> {
  return (await sql.q<{ tag: string }>('SELECT tag FROM device_tags WHERE device_id = $1 ORDER BY tag COLLATE "C"', [deviceId])).map((r) => r.tag);
}
