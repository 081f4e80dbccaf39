/**
 * The host tools the emulated-board test drives, and binfmt_misc for the board's CPU.
 * This test is only run on purpose (`npm run test:board`), so a missing tool
 * is a failure with the package that brings it, never a skip.
 */
import { execFile } from 'node:child_process';
import { access, readFile, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { findTool, toolEnv } from '../deploy/tools.js';

const execFileP = promisify(execFile);

/**
 * The CPUs the board test runs: the build-agent `--arch`, Debian's
 * architecture, qemu's binfmt entry. arm64 and armv7 are the boards, emulated
 * by qemu-user; x64 runs the same image layout natively on an x86-64 host,
 * where systemd applies the units exactly as shipped (no emulation drop-ins).
 */
export type BoardArch = 'arm64' | 'armv7' | 'x64';
export const BOARD_ARCHES: readonly BoardArch[] = ['arm64', 'armv7', 'x64'];
export const DEBIAN_ARCH: Readonly<Record<BoardArch, string>> = { arm64: 'arm64', armv7: 'armhf', x64: 'amd64' };
const BINFMT_ENTRY: Readonly<Record<Exclude<BoardArch, 'x64'>, string>> = { arm64: 'qemu-aarch64', armv7: 'qemu-arm' };

/** True when the board's code runs through qemu-user (false: native x86-64). */
export function isEmulated(arch: BoardArch): arch is Exclude<BoardArch, 'x64'> {
  return arch !== 'x64';
}

/** tool -> Debian package that installs it (every board). */
export const BOARD_TOOLS: Readonly<Record<string, string>> = {
  debootstrap: 'debootstrap',
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
};
/** tool -> package, per board CPU: qemu-user for its code, the cross compiler for its GPIO addon. */
export const ARCH_TOOLS: Readonly<Record<BoardArch, Readonly<Record<string, string>>>> = {
  arm64: { 'qemu-aarch64-static': 'qemu-user-static', 'aarch64-linux-gnu-g++': 'g++-aarch64-linux-gnu' },
  armv7: { 'qemu-arm-static': 'qemu-user-static', 'arm-linux-gnueabihf-g++': 'g++-arm-linux-gnueabihf' },
  x64: {},
};

export class BoardSetupError extends Error {
  constructor(
    readonly code: 'E_BOARD_TOOL' | 'E_BOARD_ROOT' | 'E_BOARD_BINFMT' | 'E_BOARD_BOOT' | 'E_BOARD_EXEC',
    message: string,
  ) {
    super(`${code}: ${message}`);
    this.name = 'BoardSetupError';
  }
}

/** Absolute paths of every board tool; throws naming the packages to install. */
export function requireBoardTools(arch: BoardArch): Record<string, string> {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    throw new BoardSetupError('E_BOARD_TOOL', 'the emulated-board test needs root (loop mounts, debootstrap, systemd-nspawn): run it as root, as CI does');
  }
  const found: Record<string, string> = {};
  const missing = new Set<string>();
  for (const [tool, pkg] of Object.entries({ ...BOARD_TOOLS, ...ARCH_TOOLS[arch] })) {
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
/** qemu-user from Debian 12's own archive (7.2) ran Trixie's debootstrap second stage in 693 s here, 10.0 (bookworm-backports) in 77 s. */
const QEMU_MIN_MAJOR = 8;

/** The board's binfmt_misc entry, parsed. */
interface BinfmtEntry {
  enabled: boolean;
  interpreter: string;
  flags: string;
  offset: string;
  magic: string;
  mask: string;
}

function parseBinfmt(text: string): BinfmtEntry | undefined {
  if (text === '') return undefined;
  const field = (name: string): string => new RegExp(`^${name}\\s*(\\S*)$`, 'm').exec(text)?.[1] ?? '';
  return {
    enabled: /^enabled$/m.test(text),
    interpreter: field('interpreter'),
    flags: field('flags:'),
    offset: field('offset'),
    magic: field('magic'),
    mask: field('mask'),
  };
}

const hexEscaped = (hex: string): string => hex.replace(/(..)/g, '\\x$1');

/**
 * The board's code runs through qemu-user: binfmt_misc mounted, and the
 * board CPU's qemu entry (qemu-aarch64, qemu-arm) enabled with the F flag
 * (the interpreter is opened at registration, so it need not exist inside
 * the container's root) and the O flag (the kernel hands qemu an open file
 * of the program: systemd >= 255 starts every service through
 * systemd-executor by fexecve() of a close-on-exec descriptor, which qemu
 * cannot reopen by path, so Trixie's units all fail with status 1 without
 * it). Debian's qemu-user-static registers F without O: the entry is then
 * registered again with the same interpreter, magic and mask plus O. This
 * changes the host's binfmt_misc entry, which is why the test runs only on
 * purpose (as root, CI's own step).
 */
export async function ensureBinfmt(arch: BoardArch): Promise<string> {
  if (!isEmulated(arch)) {
    if (process.arch !== 'x64')
      throw new BoardSetupError('E_BOARD_TOOL', `BOARD_ARCH=x64 runs the board natively and needs an x86-64 host (this one is ${process.arch})`);
    return 'none (x64 runs natively)';
  }
  const name = BINFMT_ENTRY[arch];
  const qemu = Object.keys(ARCH_TOOLS[arch]).find((t) => t.startsWith('qemu-')) ?? name;
  const version = await execFileP(findTool(qemu) ?? qemu, ['--version'], { env: toolEnv() }).then(
    (r) => r.stdout,
    () => '',
  );
  const major = Number(/version (\d+)\./.exec(version)?.[1] ?? '0');
  if (major < QEMU_MIN_MAJOR) {
    throw new BoardSetupError(
      'E_BOARD_TOOL',
      `${qemu} is ${version.split('\n')[0] || 'missing'}; the emulated board needs qemu-user >= ${QEMU_MIN_MAJOR} (Debian 12's is 7.2); fix with: apt-get install -y -t bookworm-backports qemu-user-static (with bookworm-backports in the apt sources; .ci/run does this)`,
    );
  }
  try {
    await access(`${BINFMT}/register`);
  } catch {
    await execFileP('mount', ['-t', 'binfmt_misc', 'binfmt_misc', BINFMT], { env: toolEnv() });
  }
  const read = async (): Promise<BinfmtEntry | undefined> => parseBinfmt(await readFile(`${BINFMT}/${name}`, 'utf8').catch(() => ''));
  let entry = await read();
  if (entry === undefined || !entry.enabled) {
    // Debian's qemu-user-static ships the entry; binfmt-support (or systemd-binfmt) loads it.
    for (const loader of [
      ['update-binfmts', '--import', name],
      ['update-binfmts', '--enable', name],
      ['/usr/lib/systemd/systemd-binfmt', `/usr/lib/binfmt.d/${name}.conf`],
    ]) {
      const [cmd, ...args] = loader;
      if (cmd !== undefined && findTool(cmd.replace(/^.*\//, '')) !== undefined) await execFileP(cmd, args, { env: toolEnv() }).catch(() => undefined);
    }
    entry = await read();
  }
  if (entry === undefined || !entry.enabled) {
    throw new BoardSetupError(
      'E_BOARD_BINFMT',
      `no enabled ${name} entry in ${BINFMT}; fix with: apt-get install -y qemu-user-static binfmt-support && update-binfmts --enable ${name}`,
    );
  }
  if (!entry.flags.includes('F')) {
    throw new BoardSetupError(
      'E_BOARD_BINFMT',
      `the ${name} binfmt entry lacks the F flag (flags: ${entry.flags || 'none'}), so ${arch} programs cannot start inside a container; re-register it from Debian's qemu-user-static package (update-binfmts --import ${name})`,
    );
  }
  if (!entry.flags.includes('O')) {
    const flags = [...new Set([...entry.flags, 'O'])].join('');
    await writeFile(`${BINFMT}/${name}`, '-1');
    await writeFile(
      `${BINFMT}/register`,
      `:${name}:M:${entry.offset === '0' ? '' : entry.offset}:${hexEscaped(entry.magic)}:${hexEscaped(entry.mask)}:${entry.interpreter}:${flags}`,
    );
    entry = await read();
    if (entry === undefined || !entry.enabled || !entry.flags.includes('O'))
      throw new BoardSetupError('E_BOARD_BINFMT', `could not register ${name} again with the O flag`);
  }
  return `${name}: ${entry.interpreter} (flags ${entry.flags})`;
}
