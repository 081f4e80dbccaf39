/**
 * Agent releases in SQLite (the `releases` table, migration 7): one live row
 * per version and architecture, its artifact's size and SHA-256, and the
 * signed manifest. The files (artifact.tar.gz, index.bin, manifest.jws,
 * manifest.json) live under DATA/releases/VERSION-ARCH/ (server/releases/store.ts).
 * A removed release keeps its row (removed_at) for the audit.
 */
import { CodedError, type ReleaseManifest } from '../../../protocol/index.js';
import { UPGRADE_FETCH_GRACE_MS, type ReleaseRecord } from '../records.js';
import { releaseRecord, type ReleaseRow } from '../rows.js';
import type { ReleaseFile, ReleaseStore } from '../types.js';
import { appendAudit } from './audit.js';
import type { SqliteDb } from './db.js';

export class SqliteReleaseStore implements ReleaseStore {
  /** One machine: a release's files are in its data directory (DATA/releases/VERSION-ARCH), not in the registry. */
  readonly keepsFiles = false;
  readonly #s: SqliteDb;

  constructor(s: SqliteDb) {
    this.#s = s;
  }

  /** Live releases (newest first by time added), optionally of one version. */
  async list(filter: { version?: string } = {}): Promise<ReleaseRecord[]> {
    return this.#list(filter);
  }

  /** As list, in the caller's transaction. */
  #list(filter: { version?: string } = {}): ReleaseRecord[] {
    const rows =
      filter.version === undefined
        ? this.#s.db.prepare('SELECT * FROM releases WHERE removed_at IS NULL ORDER BY added_at DESC, id DESC').all()
        : this.#s.db.prepare('SELECT * FROM releases WHERE removed_at IS NULL AND version = ? ORDER BY arch').all(filter.version);
    return (rows as ReleaseRow[]).map(releaseRecord);
  }

  async get(version: string, arch: string): Promise<ReleaseRecord | undefined> {
    return this.#get(version, arch);
  }

  #get(version: string, arch: string): ReleaseRecord | undefined {
    const row = this.#s.db.prepare('SELECT * FROM releases WHERE removed_at IS NULL AND version = ? AND arch = ?').get(version, arch) as ReleaseRow | undefined;
    return row ? releaseRecord(row) : undefined;
  }

  /** A live release by its artifact's SHA-256. */
  async bySha256(sha256: string): Promise<ReleaseRecord | undefined> {
    const row = this.#s.db.prepare('SELECT * FROM releases WHERE removed_at IS NULL AND sha256 = ? ORDER BY id DESC LIMIT 1').get(sha256) as
      ReleaseRow | undefined;
    return row ? releaseRecord(row) : undefined;
  }

  /**
   * The one live release of `version`, of `arch` when given: E_NO_RELEASE when
   * there is none, E_USAGE naming the arches when the version has several and none was named.
   */
  async require(version: string, arch?: string): Promise<ReleaseRecord> {
    const all = this.#list({ version });
    if (all.length === 0) throw new CodedError('E_NO_RELEASE', `no release ${version}; see: provision-server release list`);
    if (arch !== undefined) {
      const one = all.find((r) => r.arch === arch);
      if (!one) throw new CodedError('E_NO_RELEASE', `release ${version} has no ${arch} build (it has: ${all.map((r) => r.arch).join(', ')})`);
      return one;
    }
    if (all.length > 1) throw new CodedError('E_USAGE', `release ${version} has builds for ${all.map((r) => r.arch).join(', ')}: name one with --arch`);
    return all[0] as ReleaseRecord;
  }

  /** Records a release (its files already in place): E_RELEASE_EXISTS when that version and arch is live. */
  async putFiles(): Promise<void> {
    return undefined;
  }

  async files(): Promise<ReleaseFile[] | undefined> {
    return undefined;
  }

  async add(m: ReleaseManifest, manifestJws: string, dir: string): Promise<ReleaseRecord> {
    return this.#s.db
      .transaction(() => {
        if (this.#get(m.version, m.arch)) throw new CodedError('E_RELEASE_EXISTS', `release ${m.version} for ${m.arch} already exists; remove it first`);
        const now = this.#s.now();
        const { lastInsertRowid } = this.#s.db
          .prepare('INSERT INTO releases (version, arch, bytes, sha256, manifest, dir, added_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
          .run(m.version, m.arch, m.artifact.bytes, m.artifact.sha256, manifestJws, dir, now);
        appendAudit(this.#s, 'release.add', null, { version: m.version, arch: m.arch, bytes: m.artifact.bytes, sha256: m.artifact.sha256 });
        return releaseRecord(this.#s.db.prepare('SELECT * FROM releases WHERE id = ?').get(lastInsertRowid) as ReleaseRow);
      })
      .immediate();
  }

  /**
   * What keeps a release from being removed: a running or paused rollout of an
   * upgrade to its version, or an upgrade command for its artifact in flight
   * (sent, unanswered, not past its serving window). Undefined when nothing does.
   */
  async inUse(r: ReleaseRecord): Promise<string | undefined> {
    return this.#inUse(r);
  }

  /** As inUse, in the caller's transaction. */
  #inUse(r: ReleaseRecord): string | undefined {
    const rollouts = this.#s.db
      .prepare(
        `SELECT id FROM rollouts WHERE action = 'upgrade' AND finished_at IS NULL AND state IN ('running', 'paused')
           AND json_extract(params, '$.release') = ? LIMIT 5`,
      )
      .all(r.version) as { id: string }[];
    if (rollouts.length) return `rollout(s) ${rollouts.map((x) => x.id).join(', ')} upgrade to ${r.version}: cancel them first`;
    const inFlight = this.#s.db
      .prepare(`SELECT device_id AS id FROM commands WHERE release_sha256 = ? AND ack_status IS NULL AND voided_at IS NULL AND expires_at + ? > ? LIMIT 5`)
      .all(r.sha256, UPGRADE_FETCH_GRACE_MS, this.#s.now()) as { id: string }[];
    if (inFlight.length) return `upgrade commands to ${inFlight.map((x) => x.id).join(', ')} are in flight (unanswered)`;
    return undefined;
  }

  /** Marks a release removed (its files are deleted by the caller afterwards). */
  async markRemoved(r: ReleaseRecord): Promise<void> {
    this.#s.db
      .transaction(() => {
        const why = this.#inUse(r);
        if (why) throw new CodedError('E_RELEASE_IN_USE', `release ${r.version} (${r.arch}) is in use: ${why}`);
        this.#s.db.prepare('UPDATE releases SET removed_at = ? WHERE id = ? AND removed_at IS NULL').run(this.#s.now(), r.id);
        appendAudit(this.#s, 'release.remove', null, { version: r.version, arch: r.arch, sha256: r.sha256 });
      })
      .immediate();
  }

  /**
   * Whether `deviceId` has an upgrade command for the artifact `sha256` in
   * flight: sent, not answered, not voided, and not past its expiry plus
   * UPGRADE_FETCH_GRACE_MS. The chunk server answers only then.
   */
  async upgradeInFlight(deviceId: string, sha256: string): Promise<boolean> {
    const row = this.#s.db
      .prepare(
        `SELECT 1 FROM commands WHERE device_id = ? AND release_sha256 = ? AND action = 'upgrade' AND sent_at IS NOT NULL
           AND ack_status IS NULL AND voided_at IS NULL AND expires_at + ? > ? LIMIT 1`,
      )
      .get(deviceId, sha256, UPGRADE_FETCH_GRACE_MS, this.#s.now());
    return row !== undefined;
  }
}
