/**
 * A release's directory on THIS machine, for the chunk server. Several serve
 * processes on several machines share one registry (PostgreSQL) and any of
 * them may get a board's fetch (a shared subscription); only the machine
 * that ran `release add` has DATA/releases/VERSION-ARCH/ on its disk. The
 * others write it, once, from the files the registry keeps
 * (`storage.releases.files`):
 *
 * - A directory already here is used when its manifest.jws is the row's and
 *   its artifact has the row's size (what `release add` or an earlier
 *   materialisation wrote); anything else there (a removed release of the
 *   same version and arch) is replaced.
 * - The registry's files are verified in memory before anything is written:
 *   manifest.jws is the row's, the artifact has the row's size and SHA-256,
 *   index.bin is the chunk index of that artifact and has the manifest's
 *   index_sha256. manifest.json is written from the row's manifest.
 * - They are written into DATA/releases/.fetch-RANDOM/, fsynced, and renamed
 *   into place (a crash leaves no half directory under the final name).
 * - Concurrent fetches of one release wait for one materialisation. A release
 *   whose files are missing or do not verify is refused (undefined), logged
 *   once per release (`release.files_missing`, `release.files_invalid`), and
 *   tried again at most every `retryMs`.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CodedError } from '../../protocol/index.js';
import { errnoCode, fsyncDirectory } from '../../lib/durable-file.js';
import { ensurePrivateDir } from '../../lib/fs.js';
import type { Logger } from '../../lib/log.js';
import type { ReleaseRecord } from '../storage/records.js';
import type { ReleaseFile, Storage } from '../storage/types.js';
import { ARTIFACT_FILE, INDEX_FILE, MANIFEST_JSON_FILE, MANIFEST_JWS_FILE, manifestOf, releaseDirOf, releasesDir } from './store.js';

export interface LocalReleasesOptions {
  storage: Storage;
  /** This machine's data directory (releases go to DATA/releases/VERSION-ARCH). Without it: the row's `dir`, never written. */
  dataDir?: string;
  log: Pick<Logger, 'info' | 'warn'>;
  /** After a failure, the registry is asked again at most this often (default 10 s). */
  retryMs?: number;
  now?: () => number;
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** The registry's files of `r`, verified against its row and manifest; E_RELEASE_FILES says what differs. */
export function verifyReleaseFiles(r: ReleaseRecord, files: readonly ReleaseFile[]): { artifact: Buffer; index: Buffer; jws: Buffer } {
  const bad = (why: string): CodedError => new CodedError('E_RELEASE_FILES', `release ${r.version} (${r.arch}): ${why}`);
  const named = (name: string): Buffer => {
    const f = files.find((x) => x.name === name);
    if (!f) throw bad(`the registry has no ${name}`);
    return f.bytes;
  };
  const artifact = named(ARTIFACT_FILE);
  const index = named(INDEX_FILE);
  const jws = named(MANIFEST_JWS_FILE);
  if (jws.toString('utf8').trim() !== r.manifest) throw bad(`${MANIFEST_JWS_FILE} is not the manifest the registry row signs`);
  const m = manifestOf(r);
  if (artifact.length !== r.bytes || artifact.length !== m.artifact.bytes)
    throw bad(`${ARTIFACT_FILE} has ${artifact.length} bytes, the manifest says ${m.artifact.bytes}`);
  if (sha256(artifact) !== r.sha256 || r.sha256 !== m.artifact.sha256) throw bad(`${ARTIFACT_FILE} does not have the manifest's SHA-256`);
  if (sha256(index) !== m.chunks.index_sha256) throw bad(`${INDEX_FILE} does not have the manifest's index_sha256`);
  const count = Math.ceil(artifact.length / m.chunks.bytes);
  if (count !== m.chunks.count || index.length !== count * 32) throw bad(`${INDEX_FILE} does not index ${m.chunks.count} chunks`);
  for (let n = 0; n < count; n++) {
    const chunk = artifact.subarray(n * m.chunks.bytes, Math.min(artifact.length, (n + 1) * m.chunks.bytes));
    if (
      !createHash('sha256')
        .update(chunk)
        .digest()
        .equals(index.subarray(n * 32, n * 32 + 32))
    )
      throw bad(`chunk ${n} does not match ${INDEX_FILE}`);
  }
  return { artifact, index, jws };
}

async function writeSynced(path: string, data: string | Uint8Array): Promise<void> {
  const fh = await open(path, 'wx', 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export class LocalReleases {
  readonly #o: LocalReleasesOptions;
  readonly #now: () => number;
  readonly #retryMs: number;
  /** Release id -> its verified directory here. */
  readonly #ready = new Map<number, string>();
  readonly #pending = new Map<number, Promise<string | undefined>>();
  /** Release id -> when it last failed. */
  readonly #failed = new Map<number, number>();
  readonly #logged = new Set<string>();

  constructor(options: LocalReleasesOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#retryMs = options.retryMs ?? 10_000;
  }

  /** The directory holding `r`'s files on this machine, written from the registry if need be; undefined: not available (logged). */
  async dirOf(r: ReleaseRecord): Promise<string | undefined> {
    const ready = this.#ready.get(r.id);
    if (ready !== undefined) return ready;
    const pending = this.#pending.get(r.id);
    if (pending) return pending;
    const failedAt = this.#failed.get(r.id);
    if (failedAt !== undefined && this.#now() - failedAt < this.#retryMs) return undefined;
    const p = this.#resolve(r).finally(() => this.#pending.delete(r.id));
    this.#pending.set(r.id, p);
    return p;
  }

  /** Forgets a directory found gone (deleted by hand): the next fetch checks again. */
  forget(id: number): void {
    this.#ready.delete(id);
  }

  async #resolve(r: ReleaseRecord): Promise<string | undefined> {
    const { dataDir } = this.#o;
    const dir = dataDir !== undefined ? releaseDirOf(dataDir, r) : r.dir;
    try {
      if (await this.#holds(dir, r)) return this.#done(r, dir);
      if (dataDir === undefined) return this.#fail(r, 'release.files_missing', { dir, reason: 'the directory is missing or holds another release' });
      const files = await this.#o.storage.releases.files(r.sha256);
      if (files === undefined) {
        return this.#fail(r, 'release.files_missing', {
          dir,
          reason: this.#o.storage.releases.keepsFiles
            ? 'not on this machine, and the registry keeps no files for it: run release add again where its files are'
            : 'not on this machine (a SQLite registry keeps no release files)',
        });
      }
      let ok: ReturnType<typeof verifyReleaseFiles>;
      try {
        ok = verifyReleaseFiles(r, files);
      } catch (err) {
        return this.#fail(r, 'release.files_invalid', { reason: err instanceof Error ? err.message : String(err) });
      }
      await this.#write(r, dir, dataDir, ok);
      this.#o.log.info('release.materialised', { version: r.version, arch: r.arch, sha256: r.sha256, bytes: r.bytes, dir });
      return this.#done(r, dir);
    } catch (err) {
      return this.#fail(r, 'release.files_error', { dir, reason: err instanceof Error ? err.message : String(err) });
    }
  }

  /** Whether `dir` holds release `r` (its manifest.jws and an artifact of its size). */
  async #holds(dir: string, r: ReleaseRecord): Promise<boolean> {
    try {
      const jws = (await readFile(join(dir, MANIFEST_JWS_FILE), 'utf8')).trim();
      if (jws !== r.manifest) return false;
      if ((await stat(join(dir, ARTIFACT_FILE))).size !== r.bytes) return false;
      return (await stat(join(dir, INDEX_FILE))).isFile();
    } catch (err) {
      if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return false;
      throw err;
    }
  }

  async #write(r: ReleaseRecord, dir: string, dataDir: string, f: { artifact: Buffer; index: Buffer; jws: Buffer }): Promise<void> {
    const root = releasesDir(dataDir);
    await ensurePrivateDir(root);
    const tmp = join(root, `.fetch-${randomBytes(6).toString('hex')}`);
    await mkdir(tmp, { mode: 0o755 });
    try {
      await writeSynced(join(tmp, ARTIFACT_FILE), f.artifact);
      await writeSynced(join(tmp, INDEX_FILE), f.index);
      await writeSynced(join(tmp, MANIFEST_JWS_FILE), `${r.manifest}\n`);
      await writeSynced(join(tmp, MANIFEST_JSON_FILE), `${JSON.stringify(manifestOf(r), null, 2)}\n`);
      await fsyncDirectory(tmp);
      // Another release's directory under this name (a removed one of the same version and arch) is replaced.
      if (!(await this.#holds(dir, r))) await rm(dir, { recursive: true, force: true });
      try {
        await rename(tmp, dir);
      } catch (err) {
        // Another process on this data directory put it in place first: theirs will do if it holds this release.
        if ((errnoCode(err) === 'ENOTEMPTY' || errnoCode(err) === 'EEXIST') && (await this.#holds(dir, r))) return;
        throw err;
      }
      await fsyncDirectory(root);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }

  #done(r: ReleaseRecord, dir: string): string {
    this.#ready.set(r.id, dir);
    this.#failed.delete(r.id);
    return dir;
  }

  #fail(r: ReleaseRecord, event: string, fields: Record<string, unknown>): undefined {
    this.#failed.set(r.id, this.#now());
    const key = `${event}:${r.id}`;
    if (!this.#logged.has(key)) {
      this.#logged.add(key);
      this.#o.log.warn(event, { version: r.version, arch: r.arch, sha256: r.sha256, ...fields });
    }
    return undefined;
  }
}
