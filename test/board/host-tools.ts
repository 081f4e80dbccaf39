/**
 * The host tools the emulated-board test drives, and binfmt_misc for arm64.
 * This test is only run on purpose (`npm run test:board`), so a missing tool
 * is a failure with the package that brings it, never a skip.
 */
import { execFile } from 'node:child_process';
import { access, readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { findTool, toolEnv } from '../deploy/tools.js';

const execFileP = promisify(execFile);

/** tool -> Debian package that installs it. */
export const BOARD_TOOLS: Readonly<Record<string, string>> = {
  debootstrap: 'debootstrap',
  'qemu-aarch64-static': 'qemu-user-static',
  'systemd-nspawn': 'systemd-container',
  nsenter: 'util-linux',
  mount: 'mount',
  umount: 'mount',
  sfdisk: 'fdisk',
  'mkfs.vfat': 'dosfstools',
  'mkfs.ext4': 'e2fsprogs',
  debugfs: 'e2fsprogs',
  mcopy: 'mtools',
  mosquitto: 'mosquitto',
  openssl: 'openssl',
  tar: 'tar',
  findmnt: 'util-linux',
  'aarch64-linux-gnu-g++': 'g++-aarch64-linux-gnu',
};

export class BoardSetupError extends Error {
  constructor(readonly code: 'E_BOARD_TOOL' | 'E_BOARD_ROOT' | 'E_BOARD_BINFMT' | 'E_BOARD_BOOT' | 'E_BOARD_EXEC', message: string) {
    super(`${code}: ${message}`);
    this.name = 'BoardSetupError';
  }
}

/** Absolute paths of every board tool; throws naming the packages to install. */
export function requireBoardTools(): Record<string, string> {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    throw new BoardSetupError('E_BOARD_TOOL', 'the emulated-board test needs root (loop mounts, debootstrap, systemd-nspawn): run it as root, as CI does');
  }
  const found: Record<string, string> = {};
  const missing = new Set<string>();
  for (const [tool, pkg] of Object.entries(BOARD_TOOLS)) {
    const path = findTool(tool);
    if (path === undefined) missing.add(pkg);
    else found[tool] = path;
  }
  if (missing.size > 0) {
    throw new BoardSetupError('E_BOARD_TOOL', `missing host tools; fix with: apt-get install -y ${[...missing].join(' ')}`);
  }
  return found;
}

const BINFMT = '/proc/sys/fs/binfmt_misc';

/**
 * arm64 binaries run through qemu-user: binfmt_misc mounted, and a
 * qemu-aarch64 entry enabled with the F flag (the interpreter is opened at
 * registration, so it need not exist inside the container's root).
 */
export async function ensureArm64Binfmt(): Promise<string> {
  try {
    await access(`${BINFMT}/register`);
  } catch {
    await execFileP('mount', ['-t', 'binfmt_misc', 'binfmt_misc', BINFMT], { env: toolEnv() });
  }
  let entry = await readFile(`${BINFMT}/qemu-aarch64`, 'utf8').catch(() => '');
  if (entry === '') {
    // Debian's qemu-user-static ships the entry; binfmt-support (or systemd-binfmt) loads it.
    for (const loader of [['update-binfmts', '--import', 'qemu-aarch64'], ['update-binfmts', '--enable', 'qemu-aarch64'], ['/usr/lib/systemd/systemd-binfmt', '/usr/lib/binfmt.d/qemu-aarch64.conf']]) {
      const [cmd, ...args] = loader;
      if (cmd !== undefined && findTool(cmd.replace(/^.*\//, '')) !== undefined) await execFileP(cmd, args, { env: toolEnv() }).catch(() => undefined);
    }
    entry = await readFile(`${BINFMT}/qemu-aarch64`, 'utf8').catch(() => '');
  }
  if (!/^enabled$/m.test(entry)) {
    throw new BoardSetupError('E_BOARD_BINFMT', 'no enabled qemu-aarch64 entry in /proc/sys/fs/binfmt_misc; fix with: apt-get install -y qemu-user-static binfmt-support && update-binfmts --enable qemu-aarch64');
  }
  const flags = /^flags:\s*(\S*)$/m.exec(entry)?.[1] ?? '';
  if (!flags.includes('F')) {
    throw new BoardSetupError('E_BOARD_BINFMT', `the qemu-aarch64 binfmt entry lacks the F flag (flags: ${flags || 'none'}), so arm64 programs cannot start inside a container; re-register it from Debian's qemu-user-static package (update-binfmts --import qemu-aarch64)`);
  }
  return entry;
}
