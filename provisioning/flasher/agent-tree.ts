/**
 * The built agent that flash ships to /opt/sensor-agent, as
 * provisioning/build-agent writes it (docs/CONTRACTS.md, "Agent tree"):
 * `sensor-agent.mjs` (the one-file agent), `native/epoll.node` (the GPIO
 * addon, optional), `node/` (the Node runtime, absent for `--node system`)
 * and `.build-info.json` (target CPU, Node version and ABI). Refused: a tree
 * without these, a tree of the old layout (dist/ + node_modules/), symlinks
 * that leave the tree, special files, and a tree whose binaries do not match
 * its own build info.
 */
import { lstat, open, readFile, readdir, readlink } from 'node:fs/promises';
import { dirname, join, posix, relative, resolve } from 'node:path';
import { FlashError } from './errors.js';

/** What ships, relative to the tree's root. */
const SHIPPED = ['sensor-agent.mjs', 'sensor-agent.mjs.LEGAL.txt', 'sensor-agent.blob', 'snapshot.env', 'native', 'node', '.build-info.json'];
const REQUIRED = ['sensor-agent.mjs', '.build-info.json'];
/** What the upgrade guard accepts as a release directory name. */
const AGENT_VERSION = /^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$/;
const BUILD = 'Build it with provisioning/build-agent --arch arm64|armv7|x64 (after npm ci && npm run build), or name a built tree with --agent DIR';

export interface AgentTreeEntry {
  /** Relative path (posix separators). */
  rel: string;
  kind: 'dir' | 'file' | 'symlink';
  /** 0755 for directories and executables, 0644 for other files. */
  mode: number;
  /** Host path (files). */
  from?: string;
  /** Link target (symlinks). */
  target?: string;
}

export interface NativeAddon {
  rel: string;
  machine: ElfMachine;
}

export type ElfMachine = 'x86-64' | 'aarch64' | 'arm' | 'x86' | `elf-${number}` | 'not-elf';

/** .build-info.json (format 2), as far as flash relies on it. */
export interface TreeBuildInfo {
  /** The release version (build-agent --agent-version): the tree's directory name on the board. */
  agentVersion: string;
  arch: string;
  elfMachine: ElfMachine;
  node: { source: 'npm' | 'tarball' | 'system'; version: string; abi: string; path: string };
  gpio: string;
  addon: { path: string; abi: string } | null;
}

export interface AgentTree {
  root: string;
  entries: AgentTreeEntry[];
  addons: NativeAddon[];
  buildInfo: TreeBuildInfo;
}

const MACHINES: Record<number, ElfMachine> = { 0x3e: 'x86-64', 0xb7: 'aarch64', 0x28: 'arm', 0x03: 'x86' };
/** build-agent's --arch for a CPU. */
export const ARCH_OF_MACHINE: Partial<Record<ElfMachine, string>> = { aarch64: 'arm64', arm: 'armv7', 'x86-64': 'x64' };

/** The CPU an ELF file (a binary or a .node addon) is built for, from its header. */
export function elfMachine(header: Buffer): ElfMachine {
  if (header.length < 20 || header.readUInt32BE(0) !== 0x7f454c46) return 'not-elf';
  const little = header[5] === 1;
  const m = little ? header.readUInt16LE(18) : header.readUInt16BE(18);
  return MACHINES[m] ?? `elf-${m}`;
}

export async function readElfMachine(path: string): Promise<ElfMachine> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(20);
    const { bytesRead } = await fh.read(buf, 0, 20, 0);
    return elfMachine(buf.subarray(0, bytesRead));
  } finally {
    await fh.close();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parses .build-info.json; anything missing or malformed is E_AGENT with the fix. */
export function parseBuildInfo(text: string, where: string): TreeBuildInfo {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new FlashError('E_AGENT', `${where} is not valid JSON. ${BUILD}`);
  }
  const bad = (what: string): FlashError => new FlashError('E_AGENT', `${where}: ${what}. Rebuild the tree: ${BUILD}`);
  if (!isObject(parsed)) throw bad('not a JSON object');
  if (parsed.format !== 2) throw bad('not written by this build-agent (format 2 expected)');
  const str = (o: Record<string, unknown>, k: string): string => {
    const v = o[k];
    if (typeof v !== 'string' || v === '') throw bad(`${k} is missing`);
    return v;
  };
  const node = parsed.node;
  if (!isObject(node)) throw bad('node is missing');
  const source = str(node, 'source');
  if (source !== 'npm' && source !== 'tarball' && source !== 'system') throw bad(`node.source "${source}" is not npm, tarball or system`);
  const addon = parsed.addon;
  if (addon !== null && !isObject(addon)) throw bad('addon must be an object or null');
  const agentVersion = str(parsed, 'agent_version');
  if (agentVersion.length > 64 || !AGENT_VERSION.test(agentVersion)) throw bad(`agent_version "${agentVersion}" is not a version x.y.z[-pre]`);
  return {
    agentVersion,
    arch: str(parsed, 'arch'),
    elfMachine: str(parsed, 'elf_machine') as ElfMachine,
    node: { source, version: str(node, 'version'), abi: str(node, 'abi'), path: str(node, 'path') },
    gpio: str(parsed, 'gpio'),
    addon: addon === null ? null : { path: str(addon, 'path'), abi: str(addon, 'abi') },
  };
}

export async function readAgentTree(agentDir: string): Promise<AgentTree> {
  const root = resolve(agentDir);
  if (!(await exists(join(root, 'sensor-agent.mjs'))) && (await exists(join(root, 'dist/agent/cli.js')))) {
    throw new FlashError('E_AGENT', `${root} is an agent tree of the old layout (dist/ and node_modules/, no sensor-agent.mjs). ${BUILD}`);
  }
  for (const rel of REQUIRED) {
    if (!(await exists(join(root, rel)))) throw new FlashError('E_AGENT', `no built agent in ${root}: ${rel} is missing. ${BUILD}`);
  }
  const buildInfo = parseBuildInfo(await readFile(join(root, '.build-info.json'), 'utf8'), join(root, '.build-info.json'));

  const entries: AgentTreeEntry[] = [];
  const addons: NativeAddon[] = [];
  const machines = new Map<string, ElfMachine>();
  const dirsAdded = new Set<string>();
  const addDir = (rel: string): void => {
    const parts = rel.split('/');
    for (let i = 1; i <= parts.length; i++) {
      const p = parts.slice(0, i).join('/');
      if (!dirsAdded.has(p)) {
        dirsAdded.add(p);
        entries.push({ rel: p, kind: 'dir', mode: 0o755 });
      }
    }
  };
  const walk = async (rel: string): Promise<void> => {
    const abs = join(root, rel);
    const st = await lstat(abs);
    if (st.isDirectory()) {
      addDir(rel);
      for (const name of (await readdir(abs)).sort()) await walk(posix.join(rel, name));
    } else if (st.isFile()) {
      const parent = posix.dirname(rel);
      if (parent !== '.') addDir(parent);
      entries.push({ rel, kind: 'file', mode: (st.mode & 0o111) !== 0 ? 0o755 : 0o644, from: abs });
      if (rel.endsWith('.node') || rel === 'node/bin/node' || rel.startsWith('node/lib/')) {
        const machine = await readElfMachine(abs);
        machines.set(rel, machine);
        if (rel.endsWith('.node')) addons.push({ rel, machine });
      }
    } else if (st.isSymbolicLink()) {
      const target = await readlink(abs);
      const resolved = resolve(dirname(abs), target);
      if (target.startsWith('/') || relative(root, resolved).startsWith('..')) {
        throw new FlashError('E_AGENT', `symlink ${abs} -> ${target} leaves the agent tree`);
      }
      const parent = posix.dirname(rel);
      if (parent !== '.') addDir(parent);
      entries.push({ rel, kind: 'symlink', mode: 0o777, target });
    } else {
      throw new FlashError('E_AGENT', `${abs} is not a regular file, directory or symlink`);
    }
  };
  for (const rel of SHIPPED) if (await exists(join(root, rel))) await walk(rel);

  // The tree must be what its build info says: binaries for its CPU, the addon for its Node.
  const info = buildInfo;
  const wrong = [...machines].filter(([, m]) => m !== info.elfMachine);
  if (wrong.length > 0) {
    throw new FlashError(
      'E_AGENT',
      `${root}: ${wrong.map(([r, m]) => `${r} is built for ${m}`).join(', ')}, but the tree is for ${info.arch} (${info.elfMachine}). Rebuild it: provisioning/build-agent --arch ${info.arch}`,
    );
  }
  // The startup snapshot loads only into the Node that wrote it: the tree's own (never --node system's), and the unit uses it only through snapshot.env.
  const blob = await exists(join(root, 'sensor-agent.blob'));
  if (blob !== (await exists(join(root, 'snapshot.env'))) || (blob && info.node.source === 'system')) {
    throw new FlashError(
      'E_AGENT',
      `${root}: sensor-agent.blob and snapshot.env come together, and only in a tree that ships its Node (this one: ${info.node.source}). Rebuild it: provisioning/build-agent --arch ${info.arch}`,
    );
  }
  if (info.node.source !== 'system' && !machines.has('node/bin/node')) {
    throw new FlashError(
      'E_AGENT',
      `${root}: node/bin/node is missing though .build-info.json says Node ${info.node.version} ships with the agent. Rebuild it: provisioning/build-agent --arch ${info.arch}`,
    );
  }
  if (info.addon !== null && (!machines.has(info.addon.path) || info.addon.abi !== info.node.abi)) {
    throw new FlashError(
      'E_AGENT',
      `${root}: the GPIO addon ${info.addon.path} is missing or built for another Node ABI (${info.addon.abi}) than the tree's Node (${info.node.abi}). Rebuild it: provisioning/build-agent --arch ${info.arch}`,
    );
  }
  return { root, entries, addons, buildInfo };
}
