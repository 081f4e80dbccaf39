/**
 * Durable, atomic file replacement and secure removal on POSIX file systems.
 *
 * `writeFileAtomic` writes a temp file next to the target, fsyncs it, renames
 * it over the target and fsyncs the directory, so a power cut at any instant
 * leaves either the complete old file or the complete new one, never a mix.
 * A crash can leave a `.<name>.tmp-<hex>` file behind; `removeStaleTemps`
 * removes those (call it at start-up, before anything else writes there).
 */
import { randomBytes } from 'node:crypto';
import { constants, type Stats } from 'node:fs';
import { lstat, mkdir, open, readdir, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { CodedError } from '../protocol/index.js';

export type DurableFileErrorCode = 'E_DISK_FULL' | 'E_WRITE' | 'E_REMOVE';

export class DurableFileError extends CodedError<DurableFileErrorCode> {
  override readonly name = 'DurableFileError';
  readonly path: string;

  constructor(code: DurableFileErrorCode, path: string, message: string, options?: { cause?: unknown }) {
    super(code, message, { cause: options?.cause, details: { path } });
    this.path = path;
  }
}

export interface WriteFileAtomicOptions {
  /** Mode of the new file (default 0o600). The temp file has it from creation on. */
  mode?: number;
  /**
   * Test hook simulating a crash after the temp file is complete and synced
   * but before the rename. If it throws, nothing after it runs, not even the
   * cleanup: the target keeps its old contents and the temp file stays, as
   * after a real crash, for `removeStaleTemps` to find. Do not use in production.
   */
  beforeRename?: (tempPath: string) => void | Promise<void>;
}

/** Names of the temp files `writeFileAtomic` creates: `.<basename>.tmp-<hex>`. */
export const TEMP_FILE_PATTERN = /^\..+\.tmp-[0-9a-f]+$/;

const ZEROS = Buffer.alloc(64 * 1024);

/** Atomically and durably replaces `path` with `data`. Throws `DurableFileError` (E_DISK_FULL or E_WRITE). */
export async function writeFileAtomic(path: string, data: string | Uint8Array, options: WriteFileAtomicOptions = {}): Promise<void> {
  const mode = options.mode ?? 0o600;
  const dir = dirname(path);
  const temp = join(dir, `.${basename(path)}.tmp-${randomBytes(8).toString('hex')}`);
  let fh: FileHandle | undefined;
  let renamed = false;
  try {
    // O_EXCL: never reuse or follow anything already there; the mode applies from creation.
    fh = await open(temp, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY | constants.O_NOFOLLOW, mode);
    await fh.chmod(mode); // the umask may have removed bits; this only restores up to `mode`
    await fh.writeFile(data);
    await fh.sync();
    await fh.close();
    fh = undefined;
    if (options.beforeRename) {
      try {
        await options.beforeRename(temp);
      } catch (crash) {
        throw new SimulatedCrash(crash);
      }
    }
    await rename(temp, path);
    renamed = true;
    await fsyncDirectory(dir);
  } catch (err) {
    if (err instanceof SimulatedCrash) throw err.crash;
    await fh?.close().catch(() => undefined);
    if (!renamed) await unlink(temp).catch(() => undefined);
    throw durableFileError(err, path, renamed ? 'sync-dir' : 'write');
  }
}

/**
 * Maps a file system error to a `DurableFileError` with a message for humans.
 * `action` says how far the operation got: `write` (target unchanged),
 * `sync-dir` (target replaced, directory sync failed) or `remove`.
 */
export function durableFileError(err: unknown, path: string, action: 'write' | 'sync-dir' | 'remove'): DurableFileError {
  if (err instanceof DurableFileError) return err;
  const code = errnoCode(err);
  const detail = err instanceof Error ? err.message : String(err);
  if (action === 'remove') return new DurableFileError('E_REMOVE', path, `could not remove ${path}: ${detail}`, { cause: err });
  if (action === 'sync-dir') {
    return new DurableFileError(
      'E_WRITE',
      path,
      `${path} was replaced but its directory could not be synced, so the change may not survive a power cut: ${detail}`,
      { cause: err },
    );
  }
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new DurableFileError(
      'E_DISK_FULL',
      path,
      `the disk is full (${code}) while writing ${path}; nothing was changed: ${path} keeps its previous contents. Free some space and retry.`,
      { cause: err },
    );
  }
  return new DurableFileError('E_WRITE', path, `could not write ${path}; nothing was changed: ${detail}`, { cause: err });
}

/** fsyncs a directory so a rename or unlink in it is durable. File systems that cannot (EINVAL) are tolerated. */
export async function fsyncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } catch (err) {
    const code = errnoCode(err);
    if (code !== 'EINVAL' && code !== 'ENOTSUP') throw err;
  } finally {
    await fh.close();
  }
}

/**
 * Removes temp files left in `dir` by a crash during `writeFileAtomic`
 * (`.*.tmp-<hex>`) and returns their names. With `secure`, each is removed
 * with `removeFileSecurely` (for temp files that may hold secrets).
 * Call it only when no other writer is active in `dir`.
 */
export async function removeStaleTemps(dir: string, options: { secure?: boolean } = {}): Promise<string[]> {
  const removed: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (!TEMP_FILE_PATTERN.test(entry.name) || entry.isDirectory()) continue;
    const path = join(dir, entry.name);
    if (options.secure) {
      if (await removeFileSecurely(path)) removed.push(entry.name);
    } else {
      try {
        await unlink(path);
        removed.push(entry.name);
      } catch (err) {
        if (errnoCode(err) !== 'ENOENT') throw durableFileError(err, path, 'remove');
      }
    }
  }
  if (removed.length > 0 && !options.secure) await fsyncDirectory(dir);
  return removed;
}

/**
 * Overwrites a regular file's length with zeros, fsyncs it, unlinks it and
 * fsyncs its directory. Symlinks and other non-regular files are only
 * unlinked (never followed or opened). Returns false if there was nothing.
 *
 * Best effort only: on flash media (SD cards, eMMC, SSDs) wear levelling and
 * on copy-on-write or journalling file systems the old blocks may survive the
 * overwrite, so this is not a guarantee that the data is unrecoverable.
 */
export async function removeFileSecurely(path: string): Promise<boolean> {
  let st: Stats;
  try {
    st = await lstat(path);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return false;
    throw durableFileError(err, path, 'remove');
  }
  try {
    if (st.isFile()) await overwriteWithZeros(path, st);
    await unlink(path);
    await fsyncDirectory(dirname(path));
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return false;
    throw durableFileError(err, path, 'remove');
  }
  return true;
}

async function overwriteWithZeros(path: string, expected: Stats): Promise<void> {
  const fh = await open(path, constants.O_WRONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const st = await fh.stat();
    if (!st.isFile() || st.ino !== expected.ino || st.dev !== expected.dev) return; // swapped under us: just unlink
    for (let pos = 0; pos < st.size;) {
      const n = Math.min(ZEROS.length, st.size - pos);
      const { bytesWritten } = await fh.write(ZEROS, 0, n, pos);
      pos += bytesWritten;
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

class SimulatedCrash {
  constructor(readonly crash: unknown) {}
}

export function errnoCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') return err.code;
  return undefined;
}

/**
 * `mkdir -p DIR` (new levels with `mode`), one level at a time: Node's recursive
 * mkdir never returns where mkdir answers ENOENT under an existing directory
 * (/proc). Throws the errno error of the level that failed; ENOTDIR for a path
 * through a file.
 */
export async function makeDirectories(dir: string, mode: number): Promise<void> {
  const missing: string[] = [];
  for (let p = resolve(dir); ; p = dirname(p)) {
    const st = await stat(p).catch((err: unknown) => {
      const code = errnoCode(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined; // ENOTDIR: a level above is a file, found next
      throw err;
    });
    if (st) {
      if (!st.isDirectory()) throw Object.assign(new Error(`ENOTDIR: ${p} is a file, not a directory`), { code: 'ENOTDIR' });
      break;
    }
    missing.unshift(p);
    if (dirname(p) === p) break;
  }
  for (const d of missing) {
    await mkdir(d, { mode }).catch((err: unknown) => {
      if (errnoCode(err) !== 'EEXIST') throw err;
    });
  }
}
