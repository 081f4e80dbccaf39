/**
 * Mounting an image's root partition through a loop device (root only):
 * `losetup --offset --sizelimit`, then mount -t ext4 on a temporary
 * directory. Always detached again, also on failure.
 */
import { mkdtemp, rmdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Partition } from './partitions.js';
import { mustRun, requireTool, runTool } from './run-tool.js';

export async function withLoopMountedRoot<T>(image: string, part: Partition, work: (mountPoint: string) => Promise<T>): Promise<T> {
  const losetup = requireTool('losetup', 'mount');
  const mount = requireTool('mount', 'mount');
  const umount = requireTool('umount', 'mount');
  const r = await mustRun(
    losetup,
    ['--find', '--show', '--offset', String(part.offset), '--sizelimit', String(part.size), image],
    `attaching ${image} to a loop device`,
  );
  const device = r.stdout.trim();
  let mountPoint: string | undefined;
  let mounted = false;
  try {
    mountPoint = await mkdtemp(join(tmpdir(), 'flash-root-'));
    await mustRun(mount, ['-t', 'ext4', '-o', 'nodev,nosuid', device, mountPoint], `mounting ${device}`);
    mounted = true;
    return await work(mountPoint);
  } finally {
    if (mounted && mountPoint !== undefined) await runTool(umount, [mountPoint]);
    await runTool(losetup, ['-d', device]);
    if (mountPoint !== undefined) await rmdir(mountPoint).catch(() => undefined);
  }
}

/**
 * True when the root partition can be attached and mounted here (root, loop
 * devices, mount permitted: containers often have the first without the
 * last). Probed read-only.
 */
export async function loopAvailable(image: string, part: Partition): Promise<boolean> {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return false;
  let losetup: string;
  let mount: string;
  let umount: string;
  try {
    losetup = requireTool('losetup', 'mount');
    mount = requireTool('mount', 'mount');
    umount = requireTool('umount', 'mount');
  } catch {
    return false;
  }
  const r = await runTool(losetup, ['--find', '--show', '--read-only', '--offset', String(part.offset), '--sizelimit', String(part.size), image]);
  if (r.code !== 0) return false;
  const device = r.stdout.trim();
  const mountPoint = await mkdtemp(join(tmpdir(), 'flash-probe-'));
  try {
    const m = await runTool(mount, ['-t', 'ext4', '-o', 'ro,noload,nodev,nosuid,noexec', device, mountPoint]);
    if (m.code !== 0) return false;
    await runTool(umount, [mountPoint]);
    return true;
  } finally {
    await runTool(losetup, ['-d', device]);
    await rmdir(mountPoint).catch(() => undefined);
  }
}
