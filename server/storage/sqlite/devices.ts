/**
 * Devices, their keys and tags in SQLite. Every change of more than one row
 * is one IMMEDIATE transaction (server/storage/sqlite/db.ts). The helpers
 * exported here run inside the callers' transactions (enrollment, seq,
 * commands).
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
import type { SqliteDb } from './db.js';

/** The device's tags, sorted. */
function tagsOf(db: SqliteDb['db'], deviceId: string): string[] {
  return (db.prepare('SELECT tag FROM device_tags WHERE device_id = ? ORDER BY tag').all(deviceId) as { tag: string }[]).map((r) => r.tag);
}

/** The device of `row`, with its keys (oldest first) and tags. */
function deviceRecordOf(db: SqliteDb['db'], row: DeviceRow): DeviceRecord {
  const keys = db.prepare('SELECT * FROM device_keys WHERE device_id = ? ORDER BY added_at, kid').all(row.id) as KeyRow[];
  return deviceRecord(row, keys.map(keyRecord), tagsOf(db, row.id));
}

export function getDevice(s: SqliteDb, id: string): DeviceRecord | undefined {
  const row = s.db.prepare('SELECT * FROM devices WHERE id = ?').get(id) as DeviceRow | undefined;
  return row ? deviceRecordOf(s.db, row) : undefined;
}

export function requireDevice(s: SqliteDb, id: string): DeviceRecord {
  const d = getDevice(s, id);
  if (!d) throw new RegistryError('E_NO_DEVICE', `device ${id} is not registered`);
  return d;
}

export function upsertDevice(s: SqliteDb, id: string, userId: string | null, state: DeviceState, origin: DeviceOrigin): void {
  const now = s.now();
  s.db
    .prepare(
      `INSERT INTO devices (id, user_id, state, origin, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, state = excluded.state, origin = excluded.origin, updated_at = excluded.updated_at,
         flagged_at = NULL, flag = NULL`,
    )
    .run(id, userId, state, origin, now, now);
}

/** Makes these keys current; the keys they replace become `previous` (signing: verifies in-flight acks for a grace period). */
export function setCurrentKeys(s: SqliteDb, id: string, signing: PublicJwk | undefined, encryption: PublicJwk): void {
  const now = s.now();
  s.db.prepare("UPDATE device_keys SET status = 'retired' WHERE device_id = ? AND status = 'previous'").run(id);
  s.db.prepare("UPDATE device_keys SET status = 'previous', retired_at = ? WHERE device_id = ? AND status = 'current'").run(now, id);
  const insert = s.db.prepare(
    `INSERT INTO device_keys (device_id, kid, use, jwk, status, added_at) VALUES (?, ?, ?, ?, 'current', ?)
     ON CONFLICT (device_id, kid) DO UPDATE SET status = 'current', retired_at = NULL, jwk = excluded.jwk`,
  );
  if (signing) insert.run(id, signing.kid, 'sig', JSON.stringify(signing), now);
  insert.run(id, encryption.kid, 'enc', JSON.stringify(encryption), now);
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

const presenceChange = (r: PresenceRow): PresenceChange => ({
  id: r.id,
  deviceId: r.device_id,
  at: r.at,
  presence: r.presence,
  reason: r.reason,
  session: r.session,
  conn: r.conn,
});

export class SqliteDeviceStore implements DeviceStore {
  readonly #s: SqliteDb;

  constructor(s: SqliteDb) {
    this.#s = s;
  }

  async get(id: string): Promise<DeviceRecord | undefined> {
    return getDevice(this.#s, id);
  }

  async require(id: string): Promise<DeviceRecord> {
    return requireDevice(this.#s, id);
  }

  /** A page of the fleet: filters, sort, count and paging in SQL (server/storage/device-page.ts), then each row's keys, tags and last command. */
  async page(query: DevicePageQuery): Promise<{ total: number; items: DevicePageItem[] }> {
    const dialect = (): PageDialect & { args: unknown[] } => {
      const args: unknown[] = [];
      return {
        args,
        p: (v) => {
          args.push(v);
          return '?';
        },
        version: "COALESCE(d.agent_version, json_extract(d.reported, '$.agent_version'))",
        position: (h, n) => `instr(${h}, ${n})`,
      };
    };
    const db = this.#s.db;
    return db
      .transaction(() => {
        const c = dialect();
        const total = (db.prepare(`SELECT COUNT(*) AS n FROM devices d ${pageWhere(c, query)}`).get(...c.args) as { n: number }).n;
        const r = dialect();
        const where = pageWhere(r, query);
        const rows = db.prepare(`SELECT d.* FROM devices d ${where} ${pageOrder(r, query)}`).all(...r.args) as DeviceRow[];
        // The page's keys and tags in one statement each (not two per device).
        const ids = JSON.stringify(rows.map((row) => row.id));
        const keys = new Map<string, KeyRow[]>();
        for (const k of db
          .prepare('SELECT * FROM device_keys WHERE device_id IN (SELECT value FROM json_each(?)) ORDER BY device_id, added_at, kid')
          .all(ids) as KeyRow[]) {
          keys.set(k.device_id, [...(keys.get(k.device_id) ?? []), k]);
        }
        const tags = new Map<string, string[]>();
        for (const t of db
          .prepare('SELECT device_id, tag FROM device_tags WHERE device_id IN (SELECT value FROM json_each(?)) ORDER BY device_id, tag')
          .all(ids) as {
          device_id: string;
          tag: string;
        }[]) {
          tags.set(t.device_id, [...(tags.get(t.device_id) ?? []), t.tag]);
        }
        const last = db.prepare('SELECT * FROM commands WHERE device_id = ? ORDER BY created_at DESC, seq DESC LIMIT 1');
        const items = rows.map((row): DevicePageItem => {
          const cmd = last.get(row.id) as CommandRow | undefined;
          const device = deviceRecord(row, (keys.get(row.id) ?? []).map(keyRecord), tags.get(row.id) ?? []);
          return { device, lastCommand: cmd ? commandRecord(cmd) : null };
        });
        return { total, items };
      })
      .deferred();
  }

  async list(filter: DeviceListFilter = {}): Promise<DeviceRecord[]> {
    const where: string[] = [];
    const args: string[] = [];
    if (filter.userId !== undefined) {
      where.push('user_id = ?');
      args.push(filter.userId);
    }
    if (filter.tag !== undefined) {
      // A tag no device can carry is a typo, not an empty selection (send --tag, GET /devices?tag=).
      assertTag(filter.tag);
      where.push('id IN (SELECT device_id FROM device_tags WHERE tag = ?)');
      args.push(filter.tag);
    }
    const rows = this.#s.db.prepare(`SELECT * FROM devices ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id`).all(...args) as DeviceRow[];
    return rows.filter((r) => !filter.states || filter.states.includes(r.state)).map((r) => deviceRecordOf(this.#s.db, r));
  }

  /** Registers a device whose keys were made elsewhere (JWKS, legacy import, keys made on the host). */
  async add(input: NewDevice, options: { replace?: boolean } = {}): Promise<DeviceRecord> {
    this.#s.db
      .transaction(() => {
        const existing = this.#s.db.prepare('SELECT state FROM devices WHERE id = ?').get(input.id) as { state: DeviceState } | undefined;
        if (existing && !options.replace) {
          throw new RegistryError('E_DEVICE_EXISTS', `device ${input.id} is already registered (${existing.state}); remove it first or pass --replace`);
        }
        upsertDevice(this.#s, input.id, input.userId, input.state ?? 'registered', input.origin);
        setCurrentKeys(this.#s, input.id, input.signing, input.encryption);
        appendAudit(this.#s, 'device.add', input.id, {
          origin: input.origin,
          user_id: input.userId,
          signing_kid: input.signing?.kid ?? null,
          encryption_kid: input.encryption.kid,
        });
      })
      .immediate();
    return requireDevice(this.#s, input.id);
  }

  /** Deletes a device, its keys and its unused tokens (its command history and the audit log stay). */
  async remove(id: string): Promise<void> {
    this.#s.db
      .transaction(() => {
        requireDevice(this.#s, id);
        this.#s.db.prepare('DELETE FROM devices WHERE id = ?').run(id);
        this.#s.db.prepare('DELETE FROM enrollment_tokens WHERE device_id = ? AND used_at IS NULL').run(id);
        appendAudit(this.#s, 'device.remove', id);
      })
      .immediate();
  }

  /** Adds tags to a device (already present: unchanged); returns its tags. */
  async addTags(deviceId: string, tags: readonly string[], by?: string): Promise<string[]> {
    for (const t of tags) assertTag(t);
    this.#s.db
      .transaction(() => {
        requireDevice(this.#s, deviceId);
        const insert = this.#s.db.prepare('INSERT INTO device_tags (device_id, tag, added_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING');
        const added = tags.filter((t) => insert.run(deviceId, t, this.#s.now()).changes === 1);
        if (added.length) appendAudit(this.#s, 'device.tag.add', deviceId, { tags: added, ...(by !== undefined ? { by } : {}) });
      })
      .immediate();
    return tagsOf(this.#s.db, deviceId);
  }

  /** Removes tags from a device (absent: unchanged); returns its tags. */
  async removeTags(deviceId: string, tags: readonly string[], by?: string): Promise<string[]> {
    for (const t of tags) assertTag(t);
    this.#s.db
      .transaction(() => {
        requireDevice(this.#s, deviceId);
        const del = this.#s.db.prepare('DELETE FROM device_tags WHERE device_id = ? AND tag = ?');
        const removed = tags.filter((t) => del.run(deviceId, t).changes === 1);
        if (removed.length) appendAudit(this.#s, 'device.tag.remove', deviceId, { tags: removed, ...(by !== undefined ? { by } : {}) });
      })
      .immediate();
    return tagsOf(this.#s.db, deviceId);
  }

  async presenceHistory(deviceId: string, limit = 100): Promise<PresenceChange[]> {
    requireDevice(this.#s, deviceId);
    const rows = this.#s.db
      .prepare('SELECT id, device_id, at, presence, reason, session, conn FROM device_presence WHERE device_id = ? ORDER BY id DESC LIMIT ?')
      .all(deviceId, limit) as PresenceRow[];
    return rows.map(presenceChange);
  }

  /** Tags many devices in one IMMEDIATE transaction: every device checked first (E_NO_DEVICE naming the unknown ones), audited per device changed. */
  async bulkTags(deviceIds: readonly string[], add: readonly string[], remove: readonly string[], by: string): Promise<{ deviceId: string; tags: string[] }[]> {
    for (const t of [...add, ...remove]) assertTag(t);
    const db = this.#s.db;
    return db
      .transaction(() => {
        const exists = db.prepare('SELECT 1 FROM devices WHERE id = ?');
        const unknown = deviceIds.filter((id) => exists.get(id) === undefined);
        if (unknown.length) throw unknownDevices(unknown);
        const insert = db.prepare('INSERT INTO device_tags (device_id, tag, added_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING');
        const del = db.prepare('DELETE FROM device_tags WHERE device_id = ? AND tag = ?');
        const now = this.#s.now();
        return deviceIds.map((id) => {
          const added = add.filter((t) => insert.run(id, t, now).changes === 1);
          const removed = remove.filter((t) => del.run(id, t).changes === 1);
          if (added.length) appendAudit(this.#s, 'device.tag.add', id, { tags: added, by });
          if (removed.length) appendAudit(this.#s, 'device.tag.remove', id, { tags: removed, by });
          return { deviceId: id, tags: tagsOf(db, id) };
        });
      })
      .immediate();
  }

  async tagsOf(deviceId: string): Promise<string[]> {
    return tagsOf(this.#s.db, deviceId);
  }

  /** Every tag in use and how many devices carry it. */
  async listTags(): Promise<{ tag: string; devices: number }[]> {
    return this.#s.db.prepare('SELECT tag, COUNT(*) AS devices FROM device_tags GROUP BY tag ORDER BY tag').all() as { tag: string; devices: number }[];
  }

  /**
   * Records a verified report (see protocol/report.ts) if it is newer than
   * the newest one recorded for the device: by its position (run, conn, n),
   * or, for a legacy report without one (an older agent), only while the
   * device has never sent a report with a position, and an `offline` one only
   * for the session and connection the registry holds. A report that is not
   * newer changes nothing (a replay, a late will). `connect` and `interval`
   * make the device online, `offline` offline. The reported `last_seq` and
   * what commands change (settings digest, key ids, self-test) never move
   * back: a report whose `last_seq` is below the recorded one (a will sealed
   * before its connection's commands) only changes presence. Last-seen is the
   * server's receive time.
   */
  async recordReport(deviceId: string, claims: ReportClaims, signed?: string): Promise<ReportRecordOutcome> {
    return this.#s.db
      .transaction((): ReportRecordOutcome => {
        const row = this.#s.db.prepare('SELECT * FROM devices WHERE id = ?').get(deviceId) as DeviceRow | undefined;
        if (!row) throw new RegistryError('E_NO_DEVICE', `device ${deviceId} is not registered`);
        const notNewer = reportNotNewer(row, claims);
        if (notNewer) return { kind: notNewer };
        const position = reportPosition(claims);
        const now = this.#s.now();
        const state = JSON.stringify(nextReportedState(row.reported === null ? null : (JSON.parse(row.reported) as ReportedState), claims));
        const run = position?.run ?? null;
        const rank = position?.rank ?? null;
        const insertChange = this.#s.db.prepare('INSERT INTO device_presence (device_id, at, presence, reason, session, conn) VALUES (?, ?, ?, ?, ?, ?)');
        const changes = presenceChanges(row, claims, now);
        for (const c of changes) insertChange.run(deviceId, c.at, c.presence, c.reason, c.session, c.conn);
        const moved = presenceAuditDetail(changes, claims, signed);
        if (moved) appendAudit(this.#s, PRESENCE_EVENT, deviceId, moved);
        if (claims.reason === 'offline') {
          this.#s.db
            .prepare(
              `UPDATE devices SET presence = 'offline', presence_session = ?, presence_conn = ?, report_run = ?, report_n = ?,
                 reported = ?, reported_at = ?, last_report_jti = ? WHERE id = ?`,
            )
            .run(claims.session, claims.conn, run, rank, state, now, claims.jti, deviceId);
          return { kind: 'recorded', presence: 'offline' };
        }
        this.#s.db
          .prepare(
            `UPDATE devices SET presence = 'online', last_seen_at = ?, presence_session = ?, presence_conn = ?, report_run = ?, report_n = ?,
               report_interval_s = ?, reported = ?, reported_at = ?, last_report_jti = ? WHERE id = ?`,
          )
          .run(now, claims.session, claims.conn, run, rank, claims.interval_s, state, now, claims.jti, deviceId);
        this.#s.db
          .prepare('UPDATE devices SET agent_version = ?, arch = COALESCE(?, arch) WHERE id = ?')
          .run(claims.agent_version, claims.arch ?? null, deviceId);
        const changed = versionChange(row.agent_version, claims, signed);
        if (changed) appendAudit(this.#s, VERSION_REPORTED_EVENT, deviceId, changed);
        return { kind: 'recorded', presence: 'online' };
      })
      .immediate();
  }

  /**
   * Signing keys that may verify this device's acks: the current one, and one
   * replaced (rotate) or retired (delete) less than PREVIOUS_KEY_GRACE_MS ago,
   * so that an ack in flight, or one handled by a second process, still verifies.
   */
  async verificationKeys(id: string): Promise<PublicJwk[]> {
    const cutoff = this.#s.now() - PREVIOUS_KEY_GRACE_MS;
    const rows = this.#s.db
      .prepare("SELECT jwk FROM device_keys WHERE device_id = ? AND use = 'sig' AND (status = 'current' OR retired_at >= ?)")
      .all(id, cutoff) as { jwk: string }[];
    return rows.map((r) => JSON.parse(r.jwk) as PublicJwk);
  }

  /**
   * Signing keys that may verify this device's reports: those of
   * verificationKeys, less keys of an earlier enrollment (a board enrolled
   * again with new keys starts its report positions afresh, so a report of
   * its old identity must not verify during the grace period).
   */
  async reportVerificationKeys(id: string): Promise<PublicJwk[]> {
    const cutoff = this.#s.now() - PREVIOUS_KEY_GRACE_MS;
    const rows = this.#s.db
      .prepare(
        `SELECT k.jwk FROM device_keys k JOIN devices d ON d.id = k.device_id
         WHERE k.device_id = ? AND k.use = 'sig' AND (k.status = 'current' OR (k.retired_at >= ? AND k.added_at >= COALESCE(d.enrolled_at, 0)))`,
      )
      .all(id, cutoff) as { jwk: string }[];
    return rows.map((r) => JSON.parse(r.jwk) as PublicJwk);
  }
}
