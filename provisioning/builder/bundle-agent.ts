/**
 * The agent as one file: esbuild bundles dist/agent/cli.js (tsc's output)
 * with protocol/, lib/ and the JavaScript of its dependencies (node-jose, mqtt,
 * yargs, onoff), resolved from the repository's node_modules as installed
 * (so patch-package patches are in). The native addon stays beside it:
 * onoff's `require('epoll')` loads `./native/epoll.node` next to the bundle,
 * and fails (GPIO off, reported) where the tree has none.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import type { Plugin } from 'esbuild';
import { BuildError } from './errors.js';

export const BUNDLE_FILE = 'sensor-agent.mjs';
export const ADDON_REL = 'native/epoll.node';

/** yargs' CommonJS build, as lib/cli.ts loads it through createRequire (its ESM help layout differs). */
const YARGS_CJS = "createRequire(import.meta.url)('yargs')";

/** Modules the agent never runs, by import specifier: replaced with stubs that throw when used. */
const STUBS: ReadonlyArray<readonly [RegExp, string]> = [
  [/^\.\/ws$/, 'MQTT over WebSocket'], // mqtt/build/lib/connect/ws.js (only for ws:// and wss://)
  [/^socks$/, 'SOCKS proxies'], // mqtt's socksProxy option
  [/^pako$/, 'compressed JWE (zip)'], // node-jose's "zip": DEF, refused by the agent
];

function agentPlugin(repo: string, version: string): Plugin {
  return {
    name: 'sensor-agent',
    setup(build) {
      // The version is read from package.json beside dist/ in a development tree; the bundle carries it.
      build.onLoad({ filter: /[\\/]dist[\\/]lib[\\/]version\.js$/ }, () => ({
        contents: `export function packageVersion() { return ${JSON.stringify(version)}; }\n`,
        loader: 'js',
      }));
      build.onLoad({ filter: /[\\/]dist[\\/]lib[\\/]cli\.js$/ }, async (args) => {
        const src = await readFile(args.path, 'utf8');
        if (!src.includes(YARGS_CJS)) throw new Error(`${args.path} no longer loads yargs as ${YARGS_CJS}: update provisioning/builder/bundle-agent.ts`);
        return { contents: src.replace(YARGS_CJS, "require('yargs')"), loader: 'js', resolveDir: join(repo, 'dist/lib') };
      });
      // epoll's JS finds its addon through `bindings` (a stack-trace search that cannot work in a
      // bundle): the bundle loads it from ./native/epoll.node, relative to itself, at run time.
      build.onResolve({ filter: /^epoll$/ }, () => ({ path: 'epoll', namespace: 'epoll-addon' }));
      build.onLoad({ filter: /.*/, namespace: 'epoll-addon' }, () => ({
        contents: `module.exports = require(${JSON.stringify(`./${ADDON_REL}`)});\n`,
        loader: 'js',
      }));
      build.onResolve({ filter: /\.node$/ }, (args) => ({ path: args.path, external: true }));
      // What the agent can never use stays out of the file (and out of the board's memory): the
      // config accepts mqtt:// and mqtts:// only (no WebSocket, no SOCKS proxy) and every JWE
      // with "zip" is refused before node-jose would inflate it. Each stub throws if reached.
      for (const [filter, what] of STUBS) {
        build.onResolve({ filter }, (args) => (filter.source.startsWith('^\\.') && !/[\\/]mqtt[\\/]/.test(args.importer) ? undefined : { path: what, namespace: 'agent-stub' }));
      }
      build.onLoad({ filter: /.*/, namespace: 'agent-stub' }, (args) => ({
        contents: `const no = () => { throw new Error(${JSON.stringify('sensor-agent does not support ')} + ${JSON.stringify(args.path)}); };\nmodule.exports = new Proxy({}, { get: (_t, k) => (k === '__esModule' ? false : no) });\n`,
        loader: 'js',
      }));
    },
  };
}

export interface BundleResult {
  bytes: number;
  inputs: number;
  warnings: string[];
}

export async function bundleAgent(repo: string, outfile: string, version: string): Promise<BundleResult> {
  // esbuild is a devDependency: resolved from the repository, like everything bundled.
  let esbuild: typeof import('esbuild');
  try {
    esbuild = createRequire(join(repo, 'package.json'))('esbuild') as typeof import('esbuild');
  } catch {
    throw new BuildError('E_TOOL', `esbuild is not installed in ${repo}/node_modules: run 'npm ci' (it is a devDependency)`);
  }
  let result;
  try {
    result = await esbuild.build({
      entryPoints: [join(repo, 'dist/agent/cli.js')],
      outfile,
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20.19',
      minify: true,
      legalComments: 'linked',
      metafile: true,
      logLevel: 'silent',
      absWorkingDir: repo,
      nodePaths: [join(repo, 'node_modules')],
      // CommonJS dependencies call require() (node built-ins, the addon) and read __dirname (yargs'
      // y18n: its locale files are not shipped, so messages stay English): give the ES module both.
      banner: {
        js: "import{createRequire as __sa_cr}from'node:module';import{fileURLToPath as __sa_fp}from'node:url';const require=__sa_cr(import.meta.url);const __filename=__sa_fp(import.meta.url);const __dirname=__sa_fp(new URL('.',import.meta.url));",
      },
      plugins: [agentPlugin(repo, version)],
    });
  } catch (err) {
    throw new BuildError('E_BUNDLE', `bundling the agent failed: ${(err as Error).message}`);
  }
  const out = Object.values(result.metafile.outputs).find((o) => o.entryPoint !== undefined);
  return {
    bytes: out?.bytes ?? 0,
    inputs: Object.keys(result.metafile.inputs).length,
    warnings: result.warnings.map((w) => `${w.location?.file ?? ''}: ${w.text}`),
  };
}
