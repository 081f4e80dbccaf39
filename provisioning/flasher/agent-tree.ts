/**
 * The built agent that flash ships to /opt/sensor-agent: `package.json`,
 * `dist/agent` and `dist/protocol` (tsc output), production `node_modules`,
 * and `.build-info.json` when provisioning/build-agent made it. Refused:
 * a tree without dist/agent/cli.js, a development tree (node_modules holding
 * devDependencies), symlinks that leave the tree, special files, and native
 * addons built for another CPU than the target's.
 */
import { lstat, open, readFile, readdir, readlink } from 'node:fs/promises';
import { dirname, join, posix, relative, resolve } from 'node:path';
import { FlashError } from './errors.js';

/** What ships, relative to the tree's root. dist/server and dist/test never go to a board. */
const SHIPPED = ['package.json', 'dist/agent', 'dist/protocol', 'node_modules', '.build-info.json'];
const REQUIRED = ['package.json', 'dist/agent/cli.js', 'dist/protocol', 'node_modules'];

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

export interface AgentTree {
  root: string;
  entries: AgentTreeEntry[];
  addons: NativeAddon[];
  /** From .build-info.json (provisioning/build-agent), if present. */
  buildInfo: Record<string, unknown> | undefined;
}

const MACHINES: Record<number, ElfMachine> = { 0x3e: 'x86-64', 0xb7: 'aarch64', 0x28: 'arm', 0x03: 'x86' };

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

export async function readAgentTree(agentDir: string): Promise<AgentTree> {
  const root = resolve(agentDir);
  for (const rel of REQUIRED) {
    if (!(await exists(join(root, rel)))) {
      throw new FlashError(
        'E_AGENT',
        `no built agent in ${root}: ${rel} is missing. Build it first: npm run build && provisioning/build-agent (which writes build/sensor-agent), or name a built tree with --agent DIR`,
      );
    }
  }
  let pkg: unknown;
  try {
    pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8'));
  } catch (err) {
    throw new FlashError('E_AGENT', `${join(root, 'package.json')} is not valid JSON: ${(err as Error).message}`);
  }
  const devDeps = typeof pkg === 'object' && pkg !== null ? (pkg as { devDependencies?: unknown }).devDependencies : undefined;
  if (typeof devDeps === 'object' && devDeps !== null) {
    const present: string[] = [];
    for (const name of Object.keys(devDeps)) if (await exists(join(root, 'node_modules', name))) present.push(name);
    if (present.length > 0) {
      throw new FlashError(
        'E_AGENT',
        `${root} is a development tree: node_modules holds devDependencies (${present.slice(0, 5).join(', ')}${present.length > 5 ? ', ...' : ''}). Ship a production build: provisioning/build-agent, then --agent build/sensor-agent`,
      );
    }
  }

  const entries: AgentTreeEntry[] = [];
  const addons: NativeAddon[] = [];
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
      if (rel.endsWith('.node')) addons.push({ rel, machine: await readElfMachine(abs) });
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

  let buildInfo: Record<string, unknown> | undefined;
  if (await exists(join(root, '.build-info.json'))) {
    try {
      const parsed: unknown = JSON.parse(await readFile(join(root, '.build-info.json'), 'utf8'));
      if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) buildInfo = parsed as Record<string, unknown>;
    } catch {
      throw new FlashError('E_AGENT', `${join(root, '.build-info.json')} is not valid JSON`);
    }
  }
  return { root, entries, addons, buildInfo };
}

/**
 * Refuses native addons that cannot load on the target (whose CPU comes from
 * one of its own binaries). Without a known target machine nothing is checked.
 */
export function checkAddonsFor(tree: AgentTree, target: ElfMachine | undefined): void {
  if (target === undefined || target === 'not-elf') return;
  const wrong = tree.addons.filter((a) => a.machine !== target);
  if (wrong.length > 0) {
    throw new FlashError(
      'E_AGENT',
      `native addon${wrong.length > 1 ? 's' : ''} ${wrong.map((a) => `${a.rel} (${a.machine})`).join(', ')} cannot load on the target (${target}). ` +
        'Build the agent on or for the target CPU (provisioning/build-agent on an arm64/armv7 machine or container), or leave the GPIO addon out (provisioning/build-agent --gpio omit)',
    );
  }
}
