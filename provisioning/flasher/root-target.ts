/**
 * Writing an install plan into a root file system mounted at a directory
 * (`--root DIR`, and `--image` through loop devices), as root.
 *
 * Every file is created 0600 root in its final directory, filled, synced,
 * then given its owner and final mode and renamed into place, so no secret
 * is readable by anyone else at any moment. No path component under the
 * root may be a symlink: an absolute link in the target would otherwise
 * redirect writes into the host's own file system.
 */
import { constants } from 'node:fs';
import { chmod, chown, lchown, lstat, mkdir, open, readFile, rename, rm, symlink, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { FlashError } from './errors.js';
import type { AgentIds, FileEntry, InstallPlan } from './plan.js';
import { resolveOwner } from './plan.js';

function onTarget(root: string, path: string): string {
  return join(root, path);
}

/** Refuses a target path any existing component of which (below the root) is a symlink or not a directory. */
async function checkComponents(root: string, boardPath: string): Promise<void> {
  const parts = boardPath.split('/').filter((p) => p !== '');
  let current = root;
  for (let i = 0; i < parts.length - 1; i++) {
    current = join(current, parts[i] ?? '');
    let st;
    try {
      st = await lstat(current);
    } catch {
      return; // missing: will be created
    }
    if (st.isSymbolicLink()) {
      throw new FlashError('E_TARGET', `${current} is a symlink: refusing to write ${boardPath} through it (it could point outside the target root)`);
    }
    if (!st.isDirectory()) throw new FlashError('E_TARGET', `${current} is not a directory`);
  }
}

async function writeFileEntry(root: string, e: FileEntry, ids: AgentIds | undefined): Promise<void> {
  const dest = onTarget(root, e.path);
  const existing = await lstat(dest).catch(() => undefined);
  if (existing?.isDirectory()) throw new FlashError('E_TARGET', `${dest} is a directory, expected a file`);
  const data = 'content' in e.source ? Buffer.from(e.source.content) : await readFile(e.source.path);
  const tmp = `${dest}.flash-${randomBytes(6).toString('hex')}`;
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    await fh.writeFile(data);
    await fh.sync();
    const { uid, gid } = resolveOwner(e.owner, ids);
    await fh.chown(uid, gid);
    await fh.chmod(e.mode);
  } catch (err) {
    await fh.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  await rename(tmp, dest);
}

/**
 * Applies the plan under `root`. With `ids` unknown, owner classes resolve
 * to root (the first-boot hand-over fixes them); modes are final either way.
 */
export async function applyPlanToRoot(plan: InstallPlan, root: string, ids: AgentIds | undefined): Promise<void> {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new FlashError(
      'E_PRIVILEGE',
      "--root needs root privileges (files must belong to root and to the agent's user); without root, flash an image with --image",
    );
  }
  const rootSt = await lstat(root).catch(() => undefined);
  if (!rootSt?.isDirectory()) throw new FlashError('E_TARGET', `${root} is not a directory`);
  for (const path of plan.replace) {
    await checkComponents(root, path);
    await rm(onTarget(root, path), { recursive: true, force: true });
  }
  for (const e of plan.entries) {
    await checkComponents(root, e.path);
    const dest = onTarget(root, e.path);
    switch (e.kind) {
      case 'parent': {
        const st = await lstat(dest).catch(() => undefined);
        if (st === undefined) await mkdir(dest, { mode: 0o755 });
        else if (!st.isDirectory()) throw new FlashError('E_TARGET', `${dest} exists and is not a directory`);
        break;
      }
      case 'dir': {
        const st = await lstat(dest).catch(() => undefined);
        if (st === undefined) await mkdir(dest, { mode: 0o700 });
        else if (!st.isDirectory()) throw new FlashError('E_TARGET', `${dest} exists and is not a directory`);
        const { uid, gid } = resolveOwner(e.owner, ids);
        await chown(dest, uid, gid);
        await chmod(dest, e.mode);
        break;
      }
      case 'file':
        await writeFileEntry(root, e, ids);
        break;
      case 'symlink': {
        const st = await lstat(dest).catch(() => undefined);
        if (st?.isDirectory()) throw new FlashError('E_TARGET', `${dest} is a directory, expected a symlink`);
        if (st !== undefined) await unlink(dest);
        await symlink(e.target, dest);
        await lchown(dest, 0, 0);
        break;
      }
    }
  }
}
