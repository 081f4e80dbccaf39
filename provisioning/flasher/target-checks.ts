/**
 * Checks on the target root before writing: does the agent tree fit the
 * Node that will run it there? The target's CPU comes from one of its own
 * binaries; the image's Node version (for `--node system` trees) from its
 * dpkg status (Debian's nodejs, or NodeSource's).
 */
import { ARCH_OF_MACHINE, elfMachine, type AgentTree, type ElfMachine } from './agent-tree.js';
import { FlashError } from './errors.js';
import { MIN_NODE_VERSION, NODE_ABI_BY_MAJOR, compareVersions, parseNodeVersion } from './node-versions.js';

/** A root's CPU from one of its own binaries' ELF header (/usr/bin/env is on every Debian). */
export const PROBE_BINARY = '/usr/bin/env';

export function machineOf(header: Buffer | undefined): ElfMachine | undefined {
  if (header === undefined) return undefined;
  const m = elfMachine(header);
  return m === 'not-elf' ? undefined : m;
}

/** The installed version of Debian package `nodejs` ("20.19.2" of "20.19.2+dfsg-1"), from /var/lib/dpkg/status. */
export function dpkgNodeVersion(status: string | undefined): string | undefined {
  if (status === undefined) return undefined;
  for (const stanza of status.split(/\n\s*\n/)) {
    if (!/^Package: nodejs$/m.test(stanza) || !/^Status: .*\binstalled$/m.test(stanza)) continue;
    const m = /^Version: (?:\d+:)?(\d+\.\d+\.\d+)/m.exec(stanza);
    if (m?.[1]) return m[1];
  }
  return undefined;
}

export interface TargetFacts {
  /** The image's CPU (undefined: cannot tell). */
  machine: ElfMachine | undefined;
  /** Whether /usr/bin/node exists in the image. */
  systemNode: boolean;
  /** Its version, from dpkg (undefined: not a Debian package, or no node). */
  systemNodeVersion: string | undefined;
}

const FIX_NODE =
  'build the tree with its own Node instead: provisioning/build-agent --arch arm64 (ships Node from the npm registry), ' +
  'or for armv7 --node-tarball node-vX.Y.Z-linux-armv7l.tar.xz from nodejs.org; or use an image with nodejs >= 20.19 (Raspberry Pi OS Trixie: apt install nodejs)';

/**
 * Refuses (E_AGENT, with the fix) a tree that cannot run on the target:
 * another CPU, or (--node system) an image without Node, with a Node older
 * than 20.19 or of another ABI than the addon's. Returns warnings for what
 * cannot be told.
 */
export function checkTreeForTarget(tree: AgentTree, facts: TargetFacts): string[] {
  const info = tree.buildInfo;
  const warnings: string[] = [];
  if (facts.machine === undefined) {
    warnings.push(`cannot tell the image's CPU (no ELF ${PROBE_BINARY}): the agent tree is for ${info.arch} (${info.elfMachine})`);
  } else if (facts.machine !== info.elfMachine) {
    const arch = ARCH_OF_MACHINE[facts.machine];
    throw new FlashError(
      'E_AGENT',
      `the agent tree is built for ${info.arch} (${info.elfMachine}) but the target's CPU is ${facts.machine}: its Node and GPIO addon cannot run there. ` +
        (arch
          ? `Build one for it: provisioning/build-agent --arch ${arch} --out build/sensor-agent-${arch}, then --agent build/sensor-agent-${arch}`
          : 'This CPU is not supported'),
    );
  }
  if (info.node.source !== 'system') return warnings;

  if (!facts.systemNode) {
    throw new FlashError(
      'E_AGENT',
      `the agent tree runs on the image's own Node (built with --node system), but the image has no /usr/bin/node. Fix: ${FIX_NODE}`,
    );
  }
  const version = facts.systemNodeVersion;
  if (version === undefined) {
    warnings.push(
      `cannot tell the version of the image's /usr/bin/node (no nodejs in its dpkg status): it must be Node >= ${MIN_NODE_VERSION} with ABI ${info.node.abi} (Node ${info.node.version.split('.')[0]}.x)`,
    );
    return warnings;
  }
  const parsed = parseNodeVersion(version);
  const min = parseNodeVersion(MIN_NODE_VERSION);
  if (parsed === undefined || min === undefined) return warnings;
  if (compareVersions(parsed, min) < 0) {
    throw new FlashError(
      'E_AGENT',
      `the image's nodejs is ${version}, below the agent's minimum ${MIN_NODE_VERSION} (Raspberry Pi OS Bookworm has 18.x). Fix: ${FIX_NODE}`,
    );
  }
  const abi = NODE_ABI_BY_MAJOR[parsed[0]];
  if (info.addon !== null && abi !== info.addon.abi) {
    throw new FlashError(
      'E_AGENT',
      `the GPIO addon is built for Node ${info.node.version} (ABI ${info.addon.abi}) but the image's nodejs is ${version} (ABI ${abi ?? 'unknown'}): it would not load and the agent would run without GPIO. ` +
        `Fix: provisioning/build-agent --arch ${info.arch} --node system --system-node-version ${version}`,
    );
  }
  return warnings;
}
