/** Durable writes for the server's key and bundle files: temp, fsync, rename, fsync directory. */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { mkdir, open, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { CliError } from './cli-support.js';

export async function writeFileDurable(path: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const dir = dirname(path);
  const temp = join(dir, `.${basename(path)}.tmp-${randomBytes(6).toString('hex')}`);
  const fh = await open(temp, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY | constants.O_NOFOLLOW, mode);
  try {
    await fh.chmod(mode);
    await fh.writeFile(data);
    await fh.sync();
    await fh.close();
    await rename(temp, path);
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(temp).catch(() => undefined);
    throw err;
  }
  await syncDir(dir);
}

/**
 * `mkdir -p DIR` (new levels 0700), one level at a time: Node's recursive mkdir never
 * returns where mkdir answers ENOENT under an existing directory (/proc). Refuses a
 * path through a file (E_NOT_DIR) and one that cannot be created (E_NO_FILE), exit 2.
 */
export async function ensurePrivateDir(dir: string): Promise<void> {
  const missing: string[] = [];
  for (let p = resolve(dir); ; p = dirname(p)) {
    const st = await stat(p).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return undefined; // ENOTDIR: a level above is a file, found next
      throw new CliError('E_NO_FILE', `cannot use ${p} on the way to ${dir}: ${err.code ?? err.message}`, 2);
    });
    if (st) {
      if (!st.isDirectory()) throw new CliError('E_NOT_DIR', `${p} is a file, not a directory: cannot use ${dir} as a directory`, 2);
      break;
    }
    missing.unshift(p);
    if (dirname(p) === p) break;
  }
  for (const d of missing) {
    await mkdir(d, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw new CliError('E_NO_FILE', `cannot create directory ${d}: ${err.code ?? err.message}`, 2);
    });
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
