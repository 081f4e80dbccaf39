/**
 * Compiling onoff's native addon (epoll) for the target: node-gyp with the
 * target Node's headers (npm_config_nodedir) and, when the target CPU is not
 * this machine's, Debian's cross compiler (<triplet>-g++). The result's ELF
 * machine is checked, so an addon for the wrong CPU never reaches a tree
 * (npm_config_arch alone compiles for the host: this never relies on it).
 */
import { copyFile, cp, mkdir, mkdtemp, realpath, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { readElfMachine } from '../flasher/agent-tree.js';
import { runTool, whichTool } from '../flasher/run-tool.js';
import { BuildError } from './errors.js';
import type { NodeRuntime } from './node-runtime.js';
import { TARGETS, hostTarget, type TargetArch } from './targets.js';

const GYP_ARCH: Record<TargetArch, string> = { arm64: 'arm64', armv7: 'arm', x64: 'x64' };

async function nodeGyp(repo: string): Promise<string> {
  const candidates = [join(repo, 'node_modules/node-gyp/bin/node-gyp.js')];
  const npm = whichTool('npm');
  if (npm !== undefined) candidates.push(join(dirname(dirname(await realpath(npm))), 'node_modules/node-gyp/bin/node-gyp.js'));
  for (const c of candidates)
    if (
      await realpath(c).then(
        () => true,
        () => false,
      )
    )
      return c;
  throw new BuildError('E_TOOL', 'node-gyp is not found (it comes with npm): install npm');
}

/** The compilers for `arch` on this machine, or E_TOOL naming the Debian packages. */
export function compilersFor(arch: TargetArch): Record<string, string> {
  const missing: string[] = [];
  for (const [tool, pkg] of [
    ['make', 'make'],
    ['python3', 'python3'],
  ] as const)
    if (whichTool(tool) === undefined) missing.push(pkg);
  let env: Record<string, string> = {};
  if (hostTarget() === arch) {
    if (whichTool('g++') === undefined) missing.push('g++');
  } else {
    const t = TARGETS[arch];
    const cxx = whichTool(`${t.triplet}-g++`);
    if (cxx === undefined) missing.push(t.compilerPackage);
    env = { CC: `${t.triplet}-gcc`, CXX: `${t.triplet}-g++`, LINK: `${t.triplet}-g++`, AR: `${t.triplet}-ar`, STRIP: `${t.triplet}-strip` };
  }
  if (missing.length > 0) {
    throw new BuildError(
      'E_TOOL',
      `building the GPIO addon for ${arch} needs ${missing.join(', ')}: sudo apt-get install ${missing.join(' ')} (or build with --gpio omit: no GPIO on the board)`,
    );
  }
  return env;
}

export interface BuiltAddon {
  path: string;
  machine: string;
}

/** Builds node_modules/epoll of `repo` for `arch` and `node`; returns the .node file in a temporary directory. */
export async function buildEpoll(repo: string, arch: TargetArch, node: NodeRuntime, workDir?: string): Promise<BuiltAddon & { cleanup: () => Promise<void> }> {
  const src = join(repo, 'node_modules/epoll');
  const nan = join(repo, 'node_modules/nan');
  for (const p of [join(src, 'binding.gyp'), join(nan, 'nan.h')]) {
    if (
      !(await realpath(p).then(
        () => true,
        () => false,
      ))
    ) {
      throw new BuildError(
        'E_INPUT',
        `${p} is missing: run 'npm ci' first (onoff's epoll and nan are needed to build the GPIO addon), or build with --gpio omit`,
      );
    }
  }
  const env = compilersFor(arch);
  const work = await mkdtemp(join(workDir ?? tmpdir(), 'build-agent-epoll-'));
  const cleanup = (): Promise<void> => rm(work, { recursive: true, force: true });
  try {
    for (const f of ['binding.gyp', 'package.json']) await copyFile(join(src, f), join(work, f));
    await cp(join(src, 'src'), join(work, 'src'), { recursive: true });
    await mkdir(join(work, 'node_modules'));
    await symlink(nan, join(work, 'node_modules/nan'));
    const gyp = await nodeGyp(repo);
    const r = await runTool(process.execPath, [gyp, 'rebuild', `--arch=${GYP_ARCH[arch]}`, `--nodedir=${node.nodedir}`, '--loglevel=warn'], {
      env: { ...env, npm_config_nodedir: node.nodedir, npm_config_arch: GYP_ARCH[arch], PWD: work },
      cwd: work,
    });
    if (r.code !== 0) {
      throw new BuildError(
        'E_ADDON',
        `compiling epoll for ${arch} against Node ${node.version} failed:\n${(r.stderr || r.stdout).trim().split('\n').slice(-15).join('\n')}`,
      );
    }
    const out = join(work, 'build/Release/epoll.node');
    const strip = env.STRIP ?? 'strip';
    if (whichTool(strip) !== undefined) await runTool(strip, ['--strip-unneeded', out]);
    const machine = await readElfMachine(out);
    if (machine !== TARGETS[arch].elfMachine) {
      throw new BuildError(
        'E_ADDON',
        `epoll.node came out for ${machine}, not ${TARGETS[arch].elfMachine}: the compiler (${env.CXX ?? 'g++'}) does not build for ${arch}`,
      );
    }
    return { path: out, machine, cleanup };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
