/**
 * Footprint: the production install (`npm ci --omit=dev`) from this
 * repository's package.json and lock file in a scratch directory, its size,
 * the part the agent alone needs (the closure of its runtime dependencies:
 * mqtt, node-jose, yargs; the server's better-sqlite3 excluded), and the
 * compiled code. The agent is not bundled, so there is no bundle size.
 *
 * Quick mode installs with --ignore-scripts (no native build of better-sqlite3,
 * which takes over a minute here) and says so.
 */
import { execFile } from 'node:child_process';
import { copyFile, cp, mkdtemp, readdir, readFile, rm, lstat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

export interface FootprintFigures {
  install_command: string;
  production_install_mb: number;
  packages: number;
  agent_runtime_deps_mb: number;
  agent_runtime_packages: number;
  largest: { name: string; mb: number }[];
  dist_agent_protocol_mb: number;
  dist_server_mb: number;
  bundle: null;
  install_s: number;
}

async function du(path: string): Promise<number> {
  let total = 0;
  const st = await lstat(path);
  if (!st.isDirectory()) return st.size;
  for (const e of await readdir(path)) total += await du(join(path, e));
  return total;
}

/** The installed packages reachable from `roots` through dependencies and optionalDependencies. */
async function closure(nodeModules: string, roots: string[]): Promise<Set<string>> {
  const seen = new Set<string>();
  const stack = [...roots];
  while (stack.length) {
    const name = stack.pop() as string;
    if (seen.has(name)) continue;
    let pkg: { dependencies?: Record<string, string>; optionalDependencies?: Record<string, string> };
    try {
      pkg = JSON.parse(await readFile(join(nodeModules, name, 'package.json'), 'utf8')) as typeof pkg;
    } catch {
      continue; // optional and not installed
    }
    seen.add(name);
    stack.push(...Object.keys(pkg.dependencies ?? {}), ...Object.keys(pkg.optionalDependencies ?? {}));
  }
  return seen;
}

export async function benchFootprint(options: { ignoreScripts: boolean }): Promise<FootprintFigures> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-footprint-'));
  try {
    await copyFile(join(ROOT, 'package.json'), join(dir, 'package.json'));
    await copyFile(join(ROOT, 'package-lock.json'), join(dir, 'package-lock.json'));
    // --ignore-scripts for the root package in any case: its `prepare` (tsc) needs the dev tools;
    // the install scripts of dependencies (native builds) run through `npm rebuild` unless quick.
    const args = ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline'];
    const t0 = performance.now();
    await run('npm', args, { cwd: dir, maxBuffer: 16 * 1024 * 1024 });
    if (!options.ignoreScripts) await run('npm', ['rebuild', '--no-audit', '--no-fund'], { cwd: dir, maxBuffer: 16 * 1024 * 1024 });
    // The root's postinstall (skipped with the other root scripts above): the node-jose patch.
    await cp(join(ROOT, 'patches'), join(dir, 'patches'), { recursive: true });
    await run(join(dir, 'node_modules', '.bin', 'patch-package'), ['--error-on-fail', '--error-on-warn'], { cwd: dir, maxBuffer: 16 * 1024 * 1024 });
    const installS = (performance.now() - t0) / 1000;
    const nm = join(dir, 'node_modules');
    const names: string[] = [];
    for (const e of await readdir(nm)) {
      if (e.startsWith('.')) continue;
      if (e.startsWith('@')) for (const s of await readdir(join(nm, e))) names.push(`${e}/${s}`);
      else names.push(e);
    }
    const sizes = new Map<string, number>();
    for (const n of names) sizes.set(n, await du(join(nm, n)));
    const agentSet = await closure(nm, ['mqtt', 'node-jose', 'yargs', 'onoff']);
    const mb = (b: number): number => Math.round((b / 1024 / 1024) * 10) / 10;
    let agentBytes = 0;
    for (const n of agentSet) agentBytes += sizes.get(n) ?? 0;
    const distSize = async (sub: string): Promise<number> => {
      try {
        return await du(join(ROOT, 'dist', sub));
      } catch {
        return 0;
      }
    };
    return {
      install_command: `npm ${args.join(' ')}${options.ignoreScripts ? ' (dependency install scripts skipped: no native build)' : ' && npm rebuild'}`,
      production_install_mb: mb(await du(nm)),
      packages: names.length,
      agent_runtime_deps_mb: mb(agentBytes),
      agent_runtime_packages: agentSet.size,
      largest: [...sizes.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 6)
        .map(([name, b]) => ({ name, mb: mb(b) })),
      dist_agent_protocol_mb: mb((await distSize('agent')) + (await distSize('protocol'))),
      dist_server_mb: mb(await distSize('server')),
      bundle: null,
      install_s: Math.round(installS * 10) / 10,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
