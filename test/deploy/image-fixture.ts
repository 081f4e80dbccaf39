/**
 * Small Raspberry Pi OS-shaped disk images for the flash tests, made with
 * Debian tools and no privileges (sfdisk, mkfs.vfat --offset, mkfs.ext4 -d
 * -E offset), and read back independently of the code under test (debugfs
 * stat/cat/ls, mtools mcopy/mdir, e2fsck -n).
 */
import { execFile } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { toolEnv } from './tools.js';

const run = promisify(execFile);
export const IMAGE_TOOLS = ['sfdisk', 'mkfs.vfat', 'mkfs.ext4', 'debugfs', 'e2fsck', 'mcopy', 'mdir', 'mtype'] as const;

const SECTOR = 512;
const BOOT_START = 2048;
const BOOT_SECTORS = 16384; // 8 MiB
const ROOT_START = BOOT_START + BOOT_SECTORS;
const ROOT_SECTORS = 65536; // 32 MiB
export const BOOT_OFFSET = BOOT_START * SECTOR;
export const ROOT_OFFSET = ROOT_START * SECTOR;

export interface ImageSpec {
  /** VERSION_CODENAME in /usr/lib/os-release; undefined for none. */
  codename?: string;
  /** Files on the FAT partition (cmdline.txt is always there unless given as null). */
  boot?: Record<string, string | null>;
  /** Extra files in the root file system (relative paths). */
  root?: Record<string, string>;
  /** Omit /usr/bin/node (to see the warning). */
  noNode?: boolean;
}

export const DEFAULT_CMDLINE = 'console=serial0,115200 console=tty1 root=PARTUUID=12345678-02 rootfstype=ext4 fsck.repair=yes rootwait';

async function tool(name: string, args: string[], input?: string): Promise<string> {
  const p = run(name, args, { env: toolEnv({ MTOOLS_SKIP_CHECK: '1' }), maxBuffer: 64 * 1024 * 1024 });
  if (input !== undefined) p.child.stdin?.end(input);
  return (await p).stdout;
}

export async function makeImage(path: string, spec: ImageSpec = {}): Promise<void> {
  await truncate(path, 0).catch(() => undefined);
  await writeFile(path, '');
  await truncate(path, (ROOT_START + ROOT_SECTORS) * SECTOR);
  await tool('sfdisk', ['-q', path], `label: dos\nstart=${BOOT_START}, size=${BOOT_SECTORS}, type=c\nstart=${ROOT_START}, size=${ROOT_SECTORS}, type=83\n`);
  await tool('mkfs.vfat', ['--offset', String(BOOT_START), '-n', 'BOOTFS', path, String((BOOT_SECTORS * SECTOR) / 1024)]);

  const src = await mkdtemp(join(tmpdir(), 'image-root-'));
  try {
    const files: Record<string, string> = {
      'etc/passwd': 'root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n',
      'etc/group': 'root:x:0:\ndaemon:x:1:\ngpio:x:997:pi\npi:x:1000:\n',
      'etc/shadow': 'root:*:19000:0:99999:7:::\n',
      'etc/gshadow': 'root:*::\n',
      'etc/systemd/system/multi-user.target.wants/.keep': '',
      ...(spec.codename ? { 'usr/lib/os-release': `PRETTY_NAME="Debian GNU/Linux"\nID=debian\nVERSION_CODENAME=${spec.codename}\n` } : {}),
      ...(spec.noNode ? {} : { 'usr/bin/node': '#!/bin/sh\nexit 0\n' }),
      ...spec.root,
    };
    for (const [rel, content] of Object.entries(files)) {
      await mkdir(join(src, dirname(rel)), { recursive: true });
      await writeFile(join(src, rel), content);
    }
    await chmod(join(src, 'etc/shadow'), 0o640);
    await mkdir(join(src, 'boot/firmware'), { recursive: true });
    await tool('mkfs.ext4', ['-q', '-F', '-L', 'rootfs', '-E', `offset=${ROOT_OFFSET},root_owner=0:0`, '-d', src, path, `${(ROOT_SECTORS * SECTOR) / 1024}k`]);
  } finally {
    await rm(src, { recursive: true, force: true });
  }
  const boot = { 'cmdline.txt': `${DEFAULT_CMDLINE}\n`, 'config.txt': 'arm_64bit=1\n', ...spec.boot };
  for (const [name, content] of Object.entries(boot)) {
    if (content !== null) await writeFatFile(path, name, content);
  }
}

export async function writeFatFile(image: string, name: string, content: string): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'fat-src-'));
  try {
    await writeFile(join(dir, 'f'), content);
    await tool('mcopy', ['-o', '-i', `${image}@@${BOOT_OFFSET}`, join(dir, 'f'), `::/${name}`]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** All files on the FAT partition, recursively: name -> content. */
export async function readFat(image: string): Promise<Map<string, string>> {
  const dir = await mkdtemp(join(tmpdir(), 'fat-out-'));
  try {
    await tool('mcopy', ['-s', '-n', '-i', `${image}@@${BOOT_OFFSET}`, '::/*', dir]);
    const out = new Map<string, string>();
    const walk = async (d: string, prefix: string): Promise<void> => {
      for (const name of await readdir(d)) {
        const p = join(d, name);
        if ((await stat(p)).isDirectory()) await walk(p, `${prefix}${name}/`);
        else out.set(`${prefix}${name}`, await readFile(p, 'utf8'));
      }
    };
    await walk(dir, '');
    return out;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface InodeInfo {
  type: 'regular' | 'directory' | 'symlink' | string;
  mode: number;
  uid: number;
  gid: number;
}

/** debugfs stat of paths in the image's root file system (undefined: missing). */
export async function statInImage(image: string, paths: readonly string[]): Promise<Map<string, InodeInfo | undefined>> {
  const dir = await mkdtemp(join(tmpdir(), 'dbg-'));
  try {
    await writeFile(join(dir, 'cmds'), `${paths.map((p) => `stat "${p}"`).join('\n')}\n`);
    const out = await tool('debugfs', ['-f', join(dir, 'cmds'), `${image}?offset=${ROOT_OFFSET}`]);
    const blocks = out.split(/^debugfs: .*$/m).slice(1);
    const result = new Map<string, InodeInfo | undefined>();
    paths.forEach((p, i) => {
      const b = blocks[i] ?? '';
      const t = /Type: (\w+)\s+Mode:\s+([0-7]+)/.exec(b);
      const u = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(b);
      result.set(p, t && u ? { type: t[1] ?? '', mode: parseInt(t[2] ?? '0', 8), uid: Number(u[1]), gid: Number(u[2]) } : undefined);
    });
    return result;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function catInImage(image: string, path: string): Promise<string> {
  return tool('debugfs', ['-R', `cat "${path}"`, `${image}?offset=${ROOT_OFFSET}`]);
}

export async function lsInImage(image: string, path: string): Promise<string[]> {
  const out = await tool('debugfs', ['-R', `ls -p "${path}"`, `${image}?offset=${ROOT_OFFSET}`]);
  return out
    .split('\n')
    .map((l) => /^\/\d+\/[0-7]+\/\d+\/\d+\/(.*)\/\d*\/$/.exec(l.trim())?.[1])
    .filter((n): n is string => n !== undefined && n !== '.' && n !== '..');
}

/** The symlink target stored in the image. */
export async function readlinkInImage(image: string, path: string): Promise<string> {
  const out = await tool('debugfs', ['-R', `stat "${path}"`, `${image}?offset=${ROOT_OFFSET}`]);
  return /Fast link dest: "(.*)"/.exec(out)?.[1] ?? '';
}

/** e2fsck -fn on the root file system: throws with its report unless it is clean. */
export async function fsckRoot(image: string): Promise<void> {
  await tool('e2fsck', ['-fn', `${image}?offset=${ROOT_OFFSET}`]);
}

/** Copies the image's root file system out (debugfs rdump; owners and modes kept when run as root). */
export async function extractRoot(image: string, into: string): Promise<void> {
  await tool('debugfs', ['-R', `rdump / "${into}"`, `${image}?offset=${ROOT_OFFSET}`]);
}
