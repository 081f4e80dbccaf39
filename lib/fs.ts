/** Small file system helpers: does a path exist, `mkdir -p` with private new levels. (Durable writes: durable-file.ts.) */
import { lstat, mkdir, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { CodedError } from '../protocol/index.js';

/** True when something (even a dangling symbolic link) is at `path`. */
export async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
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
      throw new CodedError('E_NO_FILE', `cannot use ${p} on the way to ${dir}: ${err.code ?? err.message}`);
    });
    if (st) {
      if (!st.isDirectory()) throw new CodedError('E_NOT_DIR', `${p} is a file, not a directory: cannot use ${dir} as a directory`);
      break;
    }
    missing.unshift(p);
    if (dirname(p) === p) break;
  }
  for (const d of missing) {
    await mkdir(d, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw new CodedError('E_NO_FILE', `cannot create directory ${d}: ${err.code ?? err.message}`);
    });
  }
}
