/**
 * Running provisioning/flash (the shell wrapper, as an operator would) from
 * the tests. Unprivileged runs use a copy of the tool in a world-readable
 * temporary directory: the repository itself may sit where nobody cannot
 * read (a CI clone under /root). The flasher needs only Node's built-ins
 * and the repository files it installs, so the copy is complete.
 */
import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import { chmod, chown, copyFile, cp, mkdir, mkdtemp, readdir, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { PROVISIONING_DIR, REPO_ROOT } from './repo-paths.js';
import { isRoot, toolEnv } from './tools.js';

const execFileP = promisify(execFile);
export const FLASH = join(PROVISIONING_DIR, 'flash');
export const NOBODY = 65534;

/** What the flasher reads at run time, relative to the repository root. */
const FLASHER_FILES = [
  'provisioning/flash',
  'provisioning/firstboot',
  'provisioning/sensor-agent-cli',
  'systemd/sensor-agent.service',
  'systemd/sensor-agent-firstboot.service',
  'systemd/sensor-agent-upgrade.service',
  'systemd/sensor-agent-upgrade.path',
  'provisioning/upgrade-guard',
  'systemd/sysusers.d/sensor-agent.conf',
];

let staged: Promise<string> | undefined;

async function openUp(path: string): Promise<void> {
  const st = await stat(path);
  if (st.isDirectory()) {
    await chmod(path, 0o755);
    for (const name of await readdir(path)) await openUp(join(path, name));
  } else {
    await chmod(path, (st.mode & 0o111) !== 0 ? 0o755 : 0o644);
  }
}

/** A copy of provisioning/flash and what it needs, readable by every user; removed at exit. */
function stagedFlash(): Promise<string> {
  staged ??= (async () => {
    const dir = await mkdtemp(join(tmpdir(), 'flash-tool-'));
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    await cp(join(REPO_ROOT, 'dist/provisioning/flasher'), join(dir, 'dist/provisioning/flasher'), { recursive: true });
    await writeFile(join(dir, 'package.json'), '{"type":"module"}\n');
    for (const rel of FLASHER_FILES) {
      await mkdir(dirname(join(dir, rel)), { recursive: true });
      await copyFile(join(REPO_ROOT, rel), join(dir, rel));
    }
    await openUp(dir);
    return join(dir, 'provisioning/flash');
  })();
  return staged;
}

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs provisioning/flash; as root with `unprivileged`, as nobody (setpriv). */
export async function runFlash(args: string[], options: { unprivileged?: boolean } = {}): Promise<Ran> {
  const dropping = options.unprivileged === true && isRoot();
  const drop = dropping ? ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--'] : [];
  const tool = dropping ? await stagedFlash() : FLASH;
  const [file, ...rest] = [...drop, tool, ...args];
  try {
    const { stdout, stderr } = await execFileP(file ?? tool, rest, { env: toolEnv() });
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
