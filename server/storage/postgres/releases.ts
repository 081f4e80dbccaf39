/**
 * Agent releases in PostgreSQL, as server/storage/sqlite/releases.ts keeps them in
 * SQLite (same rows, errors, audit events). At most one live release per
 * version and arch: checked, and kept by the unique index releases_live when
 * two machines add one at once.
 *
 * The release's files (DATA/releases/VERSION-ARCH/*) are kept too, in
 * release_files, for every machine sharing the registry: `add` stores them in
 * the same transaction as the row (a release is never visible without its
 * files), `markRemoved` deletes them, `files` reads them back in slices of
 * FILE_SLICE_BYTES within one snapshot.
 */
import { CodedError, type ReleaseManifest } from '../../../protocol/index.js';
import { UPGRADE_FETCH_GRACE_MS, type ReleaseRecord } from '../records.js';
import { releaseRecord, type ReleaseRow } from '../rows.js';
import type { ReleaseFile, ReleaseStore } from '../types.js';
import { appendAudit } from './audit.js';
import type { PgDb, Sql } from './db.js';

/** Bytes read per statement from release_files (a bytea comes back as hex text: twice this as a string). */
export const FILE_SLICE_BYTES = 4 * 1024 * 1024;

export async function insertFiles(sql: Sql, releaseId: number, files: readonly ReleaseFile[]): Promise<void> {
  for (const f of files)
    await sql.run(
      'INSERT INTO release_files (release_id, name, bytes) VALUES ($1, $2, $3) ON CONFLICT (release_id, name) DO UPDATE SET bytes = EXCLUDED.bytes',
      [releaseId, f.name, f.bytes],
    );
}

const exists = (m: ReleaseManifest): CodedError => new CodedError('E_RELEASE_EXISTS', `release ${m.version} for ${m.arch} already exists; remove it first`);

export class PgReleaseStore implements ReleaseStore {
  readonly #db: PgDb;
  readonly #now: () => number;
  readonly keepsFiles = true;

  constructor(db: PgDb, now: () => number) {
    this.#db = db;
    this.#now = now;
  }

  async list(filter: { version?: string } = {}): Promise<ReleaseRecord[]> {
    const rows =
      filter.version === undefined
        ? await this.#db.q<ReleaseRow>('SELECT * FROM releases WHERE removed_at IS NULL ORDER BY added_at DESC, id DESC')
        : await this.#db.q<ReleaseRow>('SELECT * FROM releases WHERE removed_at IS NULL AND version = $1 ORDER BY arch COLLATE "C"', [filter.version]);
    return rows.map(releaseRecord);
  }

  async get(version: string, arch: string): Promise<ReleaseRecord | undefined> {
    const row = await this.#db.one<ReleaseRow>('SELECT * FROM releases WHERE removed_at IS NULL AND version = $1 AND arch = $2', [version, arch]);
    return row ? releaseRecord(row) : undefined;
  }

  async bySha256(sha256: string): Promise<ReleaseRecord | undefined> {
    const row = await this.#db.one<ReleaseRow>('SELECT * FROM releases WHERE removed_at IS NULL AND sha256 = $1 ORDER BY id DESC LIMIT 1', [sha256]);
    return row ? releaseRecord(row) : undefined;
  }

  async require(version: string, arch?: string): Promise<ReleaseRecord> {
    const all = await this.list({ version });
    if (all.length === 0) throw new CodedError('E_NO_RELEASE', `no release ${version}; see: provision-server release list`);
    if (arch !== undefined) {
      const one = all.find((r) => r.arch === arch);
      if (!one) throw new CodedError('E_NO_RELEASE', `release ${version} has no ${arch} build (it has: ${all.map((r) => r.arch).join(', ')})`);
      return one;
    }
    if (all.length > 1) throw new CodedError('E_USAGE', `release ${version} has builds for ${all.map((r) => r.arch).join(', ')}: name one with --arch`);
    return all[0] as ReleaseRecord;
  }

  async add(m: ReleaseManifest, manifestJws: string, dir: string, files: readonly ReleaseFile[] = []): Promise<ReleaseRecord> {
    try {
      return await this.#db.tx(async (sql) => {
        if (await sql.one('SELECT id FROM releases WHERE removed_at IS NULL AND version = $1 AND arch = $2', [m.version, m.arch])) throw exists(m);
        const now = this.#now();
        const row = await sql.one<ReleaseRow>(
          'INSERT INTO releases (version, arch, bytes, sha256, manifest, dir, added_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *',
          [m.version, m.arch, m.artifact.bytes, m.artifact.sha256, manifestJws, dir, now],
        );
        await insertFiles(sql, (row as ReleaseRow).id, files);
        await appendAudit(sql, now, 'release.add', null, { version: m.version, arch: m.arch, bytes: m.artifact.bytes, sha256: m.artifact.sha256 });
        return releaseRecord(row as ReleaseRow);
      });
    } catch (err) {
      // Another machine added the same version and arch between our check and insert.
      if ((err as { code?: unknown; constraint?: unknown }).code === '23505' && (err as { constraint?: unknown }).constraint === 'releases_live')
        throw exists(m);
      throw err;
    }
  }

  async putFiles(releaseId: number, files: readonly ReleaseFile[]): Promise<void> {
    await this.#db.tx(async (sql) => {
      // The row lock: a removal of the release waits (and then deletes what we stored), never the other way round.
      const live = await sql.one('SELECT id FROM releases WHERE id = $1 AND removed_at IS NULL FOR UPDATE', [releaseId]);
      if (!live) throw new CodedError('E_NO_RELEASE', `release id ${releaseId} is not a live release`);
      await insertFiles(sql, releaseId, files);
    });
  }

  async files(sha256: string): Promise<ReleaseFile[] | undefined> {
    // One snapshot for every slice: a removal meanwhile cannot hand back half a file.
    return this.#db.tx(async (sql) => {
      await sql.run('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY');
      const names = await sql.q<{ release_id: number; name: string; size: number }>(
        `SELECT f.release_id, f.name, octet_length(f.bytes) AS size FROM release_files f
           WHERE f.release_id = (SELECT id FROM releases WHERE removed_at IS NULL AND sha256 = $1 ORDER BY id DESC LIMIT 1)
           ORDER BY f.name`,
        [sha256],
      );
      if (names.length === 0) return undefined;
      const out: ReleaseFile[] = [];
      for (const f of names) {
        const bytes = Buffer.alloc(f.size);
        for (let at = 0; at < f.size; at += FILE_SLICE_BYTES) {
          const part = await sql.one<{ part: Buffer }>(
            'SELECT substring(bytes FROM $3 FOR $4) AS part FROM release_files WHERE release_id = $1 AND name = $2',
            [f.release_id, f.name, at + 1, FILE_SLICE_BYTES],
          );
          const got = part?.part ?? Buffer.alloc(0);
          if (got.length !== Math.min(FILE_SLICE_BYTES, f.size - at))
            throw new CodedError('E_RELEASE_ARTIFACT', `release file ${f.name} changed while it was read`);
          got.copy(bytes, at);
        }
        out.push({ name: f.name, bytes });
      }
      return out;
    });
  }

  inUse(r: ReleaseRecord): Promise<string | undefined> {
    return inUse(this.#db, r, this.#now());
  }

  async markRemoved(r: ReleaseRecord): Promise<void> {
    await this.#db.tx(async (sql) => {
      // The release's row lock: two removals (or a removal and a re-add) of it take turns.
      await sql.run('SELECT id FROM releases WHERE id = $1 FOR UPDATE', [r.id]);
      const why = await inUse(sql, r, this.#now());
      if (why) throw new CodedError('E_RELEASE_IN_USE', `release ${r.version} (${r.arch}) is in use: ${why}`);
      await sql.run('UPDATE releases SET removed_at = $1 WHERE id = $2 AND removed_at IS NULL', [this.#now(), r.id]);
      await sql.run('DELETE FROM release_files WHERE release_id = $1', [r.id]);
      await appendAudit(sql, this.#now(), 'release.remove', null, { version: r.version, arch: r.arch, sha256: r.sha256 });
    });
  }

  async upgradeInFlight(deviceId: string, sha256: string): Promise<boolean> {
    const row = await this.#db.one(
      `SELECT 1 AS one FROM commands WHERE device_id = $1 AND release_sha256 = $2 AND action = 'upgrade' AND sent_at IS NOT NULL
         AND ack_status IS NULL AND voided_at IS NULL AND expires_at + $3 > $4 LIMIT 1`,
      [deviceId, sha256, UPGRADE_FETCH_GRACE_MS, this.#now()],
    );
    return row !== undefined;
  }
}

/**
 * What keeps a release from being removed: a running or paused rollout of an
 * upgrade to its version, or an upgrade command for its artifact in flight
 * (unanswered, not voided, not past its serving window).
 */
async function inUse(sql: Sql, r: ReleaseRecord, now: number): Promise<string | undefined> {
  const rollouts = await sql.q<{ id: string }>(
    `SELECT id FROM rollouts WHERE action = 'upgrade' AND finished_at IS NULL AND state IN ('running', 'paused')
       AND params::jsonb ->> 'release' = $1 LIMIT 5`,
    [r.version],
  );
  if (rollouts.length) return `rollout(s) ${rollouts.map((x) => x.id).join(', ')} upgrade to ${r.version}: cancel them first`;
  const inFlight = await sql.q<{ id: string }>(
    'SELECT device_id AS id FROM commands WHERE release_sha256 = $1 AND ack_status IS NULL AND voided_at IS NULL AND expires_at + $2 > $3 LIMIT 5',
    [r.sha256, UPGRADE_FETCH_GRACE_MS, now],
  );
  if (inFlight.length) return `upgrade commands to ${inFlight.map((x) => x.id).join(', ')} are in flight (unanswered)`;
  return undefined;
}
