/**
 * The agent as one file: esbuild bundles dist/agent/cli.js (tsc's output)
 * with protocol/, lib/ and the JavaScript of its dependencies (node-jose, mqtt,
 * yargs, onoff), resolved from the repository's node_modules as installed
 * (so patch-package patches are in). The native addon stays beside it:
 * onoff's `require('epoll')` loads `./native/epoll.node` next to the bundle,
 * and fails (GPIO off, reported) where the tree has none.
 */
import { readFile } from 'node:fs/promises';
import { createRequire, isBuiltin } from 'node:module';
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
  [/^\.\/socks$/, 'SOCKS proxies'], // mqtt/build/lib/connect/socks.js, the socksProxy option's stream (loads node:assert and node:dns at import)
  [/^pako$/, 'compressed JWE (zip)'], // node-jose's "zip": DEF, refused by the agent
  [/^worker-timers$/, 'MQTT keepalive timers in a web worker'], // mqtt's timerVariant 'worker' (browsers; the agent's is 'auto', native timers in Node)
];

/**
 * node-jose's lodash functions (lodash/clone, lodash/merge, ...): each is loaded on its first call,
 * not at start. Together they pull in a large part of lodash's internals, which the agent would
 * otherwise compile and run at every start (about 13 ms on Node 26 with the agent's flags). Every
 * node-jose use is a plain call (`clone(x)`, `partialRight(merge, fn)`), which the wrapper forwards.
 */
const LAZY_FUNCTIONS = /^lodash\/\w+$/;

/**
 * The agent's own ES modules import Node built-ins (`import { connect } from 'node:tls'`), and so do
 * the ES modules of its dependencies, without the prefix (uuid's `import crypto from 'crypto'`, under
 * node-jose; yargs' ESM helpers: 'fs', 'path', 'util', 'assert', 'url'): in an ES module each builds
 * an ES facade of the whole built-in, reading every export once at start (node:tls's
 * rootCertificates getter parses Node's bundled CA store: about 4 ms; node:crypto's webcrypto getter
 * loads all of Web Crypto: about 15 ms on Node 26 with the agent's flags; node:fs's ReadStream
 * getters load its streams). The bundle takes them through require() instead (a CommonJS module
 * object, read one property at a time, when used).
 */
const isBuiltinImport = (path: string): boolean => path.startsWith('node:') || isBuiltin(path);

/**
 * `import { hideBin } from 'yargs/helpers'` (agent/cli.ts) resolves to yargs' ESM helpers, which
 * load a second copy of yargs-parser and yargs' ESM platform shim (y18n, cliui) beside the CommonJS
 * build the CLI runs: the bundle takes the CommonJS helpers (the same hideBin, from the same
 * build/index.cjs the CLI already loads).
 */
const YARGS_HELPERS = /^yargs\/helpers$/;

/**
 * Dependencies' modules loaded on first use: mqtt's topic-alias-send.js requires lru-cache at import,
 * and lru-cache reads the `performance` global at import, which loads perf_hooks and its 7 internal
 * modules (compiled from source with the agent's flags). mqtt makes an LRUCache only for MQTT 5
 * topic aliases the broker offers at CONNACK. The module object's properties (LRUCache) load the
 * real module when first read; export names from the installed package at build time.
 */
const LAZY_MODULES = /^lru-cache$/;

/**
 * Built-ins with lazy data properties: node:util's parseArgs, diff, setTraceSigInt, ... are values
 * that load their module (parse_args, assert's myers_diff, worker_threads) when first read, and
 * reading a property's descriptor reads the value. esbuild's interop for `import { promisify } from
 * 'node:util'` (protocol/keys.ts) copies every property of the module object that way, at start:
 * about 9 built-in modules compiled for nothing. The bundle's module object for these is one of
 * accessors that read the built-in's property when used (the same values, read later).
 */
const LAZY_VALUE_BUILTINS: ReadonlySet<string> = new Set(['util']);

/**
 * Built-ins loaded on first use, not at start: node:tls (about 2.8 MB of resident memory and 5 ms
 * of start on Node 26 with the agent's flags) is used only for an mqtts:// broker and by the
 * self-test's broker probe; node:child_process (about 4 ms: with the agent's flags Node compiles it
 * and its internals from source) only by systemd-notify (under systemd), hooks and the self-test. Imported and required by the agent and mqtt alike as an object whose
 * properties (tls.connect, ...) load the real module when first read. Export names from the Node
 * that builds the bundle (the agent uses only names that exist since Node 20).
 */
const LAZY_BUILTINS: ReadonlySet<string> = new Set(['tls', 'child_process']);

/**
 * mqtt and mqtt-packet log through `debug`, which at import probes the terminal for colours (tty,
 * supports-color, os): about 4 ms of every start for output only DEBUG=mqttjs* turns on. Without
 * DEBUG in the environment the bundle gives them disabled loggers; with it, the real `debug`.
 */
const DEBUG_SHIM = `if (process.env.DEBUG) module.exports = require('debug');
else {
  const off = (namespace) => {
    const d = function () {};
    return Object.assign(d, { namespace, enabled: false, log: d, destroy: () => false, extend: (s, sep) => off(namespace + (sep === undefined ? ':' : sep) + s) });
  };
  module.exports = Object.assign(off, { default: off, enable() {}, disable: () => '', enabled: () => false, names: [], skips: [], formatters: {} });
}
`;

const nodeRequire = createRequire(import.meta.url);

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
        build.onResolve({ filter }, (args) =>
          filter.source.startsWith('^\\.') && !/[\\/]mqtt[\\/]/.test(args.importer) ? undefined : { path: what, namespace: 'agent-stub' },
        );
      }
      build.onResolve({ filter: LAZY_FUNCTIONS }, (args) =>
        args.namespace === 'lazy-function' || !/[\\/]node-jose[\\/]/.test(args.importer)
          ? undefined
          : { path: args.path, namespace: 'lazy-function', pluginData: args.resolveDir },
      );
      build.onLoad({ filter: /.*/, namespace: 'lazy-function' }, (args) => ({
        contents: `var f;\nmodule.exports = function () { return (f || (f = require(${JSON.stringify(args.path)}))).apply(this, arguments); };\n`,
        loader: 'js',
        resolveDir: args.pluginData as string,
      }));
      build.onResolve({ filter: /^(node:)?[a-z_/]+$/ }, (args) => {
        const name = args.path.replace(/^node:/, '');
        if (LAZY_BUILTINS.has(name) && args.namespace !== 'lazy-builtin') return { path: name, namespace: 'lazy-builtin' };
        if (isBuiltinImport(args.path) && args.kind === 'import-statement' && args.namespace === 'file') return { path: args.path, namespace: 'builtin-cjs' };
        return undefined;
      });
      build.onResolve({ filter: YARGS_HELPERS }, (args) =>
        args.kind === 'import-statement' && args.namespace === 'file'
          ? { path: args.path, namespace: 'yargs-helpers-cjs', pluginData: args.resolveDir }
          : undefined,
      );
      build.onLoad({ filter: /.*/, namespace: 'yargs-helpers-cjs' }, (args) => ({
        contents: `module.exports = require(${JSON.stringify(args.path)});\n`,
        loader: 'js',
        resolveDir: args.pluginData as string,
      }));
      build.onResolve({ filter: LAZY_MODULES }, (args) =>
        args.namespace === 'file' && /[\\/]node_modules[\\/]mqtt[\\/]/.test(args.importer)
          ? { path: args.path, namespace: 'lazy-module', pluginData: args.resolveDir }
          : undefined,
      );
      build.onLoad({ filter: /.*/, namespace: 'lazy-module' }, (args) => {
        const dir = args.pluginData as string;
        const names = Object.keys(createRequire(join(dir, 'noop.js'))(args.path) as object);
        return {
          contents: `var m;\nconst o = {};\nfor (const k of ${JSON.stringify(names)}) Object.defineProperty(o, k, { enumerable: true, get: () => (m || (m = require(${JSON.stringify(args.path)})))[k] });\nmodule.exports = o;\n`,
          loader: 'js',
          resolveDir: dir,
        };
      });
      build.onLoad({ filter: /.*/, namespace: 'builtin-cjs' }, (args) => ({
        contents: LAZY_VALUE_BUILTINS.has(args.path.replace(/^node:/, ''))
          ? `const m = require(${JSON.stringify(args.path)});\nconst o = {};\nfor (const k of Object.getOwnPropertyNames(m)) Object.defineProperty(o, k, { enumerable: true, get: () => m[k] });\nmodule.exports = o;\n`
          : `module.exports = require(${JSON.stringify(args.path)});\n`,
        loader: 'js',
      }));
      build.onLoad({ filter: /.*/, namespace: 'lazy-builtin' }, (args) => {
        const names = Object.keys(nodeRequire(`node:${args.path}`) as object);
        return {
          contents: `var m;\nconst o = {};\nfor (const k of ${JSON.stringify(names)}) Object.defineProperty(o, k, { enumerable: true, get: () => (m || (m = require(${JSON.stringify(`node:${args.path}`)})))[k] });\nmodule.exports = o;\n`,
          loader: 'js',
        };
      });
      build.onResolve({ filter: /^debug$/ }, (args) =>
        args.namespace === 'debug-shim' ? undefined : { path: 'debug', namespace: 'debug-shim', pluginData: args.resolveDir },
      );
      build.onLoad({ filter: /.*/, namespace: 'debug-shim' }, (args) => ({ contents: DEBUG_SHIM, loader: 'js', resolveDir: args.pluginData as string }));
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
      // SA_BUNDLE_NOMINIFY=1 (by hand, for a readable CPU profile: names of modules and functions kept); never for a tree that ships.
      minify: process.env.SA_BUNDLE_NOMINIFY !== '1',
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
