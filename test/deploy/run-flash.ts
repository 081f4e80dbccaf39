/** Running provisioning/flash (the shell wrapper, as an operator would) from the tests. */
import { execFile } from 'node:child_process';
import { chown, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PROVISIONING_DIR } from './repo-paths.js';
import { isRoot, toolEnv } from './tools.js';

const execFileP = promisify(execFile);
export const FLASH = join(PROVISIONING_DIR, 'flash');
export const NOBODY = 65534;

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs provisioning/flash; as root with `unprivileged`, as nobody (setpriv). */
export async function runFlash(args: string[], options: { unprivileged?: boolean } = {}): Promise<Ran> {
  const drop = options.unprivileged && isRoot() ? ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--'] : [];
  const [file, ...rest] = [...drop, FLASH, ...args];
  try {
    const { stdout, stderr } = await execFileP(file ?? FLASH, rest, { env: toolEnv() });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw err;
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}


/** chown -R (not following symlinks), so an unprivileged flash can read the test's bundle and write its image. */
export async function chownTree(path: string, uid: number): Promise<void> {
  await chown(path, uid, uid);
  for (const e of await readdir(path, { withFileTypes: true })) {
    const p = join(path, e.name);
    if (e.isDirectory()) await chownTree(p, uid);
    else if (!e.isSymbolicLink()) await chown(p, uid, uid);
  }
}
