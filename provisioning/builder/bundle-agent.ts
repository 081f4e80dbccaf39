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
import { dirname, join } from 'node:path';
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
 * Of those, the ones node-jose calls at import to make a function (lib/util/merge.js:
 * `partialRight(merge, mergeBuffer)`): the lazy version returns a function that makes the real one
 * on its first call, so that no lodash module is loaded, or run, at start (lodash's shortOut reads
 * the clock when its functions run, which must not happen in a startup snapshot's build either).
 */
const LAZY_HIGHER_ORDER: ReadonlySet<string> = new Set(['lodash/partialRight']);

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
 * supports-color, os): about 4 ms of every start for output only DEBUG=mqttjs* turns on. The bundle
 * gives them loggers that read DEBUG at their first call (not at import: a startup snapshot
 * evaluates the modules at build time) and load the real `debug` then if it is set; otherwise they
 * stay disabled and `debug` is never loaded.
 */
const DEBUG_SHIM = `let real;
const pick = () => (real === undefined ? (real = process.env.DEBUG ? require('debug') : null) : real);
const make = (namespace) => {
  let inst;
  const d = function () {
    const r = pick();
    if (r !== null) (inst || (inst = r(namespace))).apply(this, arguments);
  };
  Object.defineProperty(d, 'enabled', { get: () => pick() !== null && (inst || (inst = real(namespace))).enabled });
  return Object.assign(d, { namespace, log: d, destroy: () => false, extend: (s, sep) => make(namespace + (sep === undefined ? ':' : sep) + s) });
};
module.exports = Object.assign(make, { default: make, enable() {}, disable: () => '', enabled: () => false, names: [], skips: [], formatters: {} });
`;

/**
 * The startup snapshot's entry (provisioning/builder/snapshot.ts builds a V8 startup snapshot from
 * it with `node --build-snapshot`, by the Node that will run it). It evaluates the agent's modules
 * (node-jose with node-forge, mqtt, yargs and Node's built-ins they load), and nothing else: no
 * config, no keys, no command. While they evaluate, the sources of randomness and time Node offers
 * to JavaScript (Math.random, Date, process.hrtime, node:crypto's random and key functions; the
 * performance global and Web Crypto must not even be loaded) and file reads are watched, and the
 * build fails if a module used one (the snapshot would carry its result to every board). V8 itself
 * reseeds Math.random and rehashes the snapshot's hash tables with a fresh seed at every start. node-forge's PRNG must be untouched (never
 * seeded, no entropy collected); after deserializing it is replaced by a fresh instance anyway,
 * before any agent code runs. The main function then runs the CLI on this process's arguments, as
 * `node sensor-agent.mjs ARGS` would (argv[1] is the tree's sensor-agent.mjs, found beside the
 * snapshot blob), and `require` of a file (the GPIO addon) resolves in that tree.
 */
const SNAPSHOT_ENTRY = `
const v8 = require('node:v8');
const path = require('node:path');
const guard = { on: true, used: new Set() };
const watched = [
  [Math, 'random', 'Math.random'],
  [Date, 'now', 'Date.now'],
  [process, 'hrtime', 'process.hrtime'],
  [process.hrtime, 'bigint', 'process.hrtime.bigint'],
  ...['randomBytes', 'randomFillSync', 'randomFill', 'randomUUID', 'randomInt', 'getRandomValues', 'generateKeyPairSync', 'generateKeyPair', 'generateKeySync', 'createECDH', 'createDiffieHellman'].map((k) => [require('node:crypto'), k, 'crypto.' + k]),
  ...['readFileSync', 'readFile', 'openSync', 'open', 'readdirSync', 'readdir', 'statSync', 'existsSync'].map((k) => [require('node:fs'), k, 'fs.' + k]),
  ...['readFile', 'open', 'readdir', 'stat'].map((k) => [require('node:fs/promises'), k, 'fs/promises.' + k]),
];
const originals = watched.map(([o, k, label]) => {
  const d = Object.getOwnPropertyDescriptor(o, k);
  if (d === undefined || !('value' in d)) return undefined; // an accessor (a lazy built-in): not read here
  const f = o[k];
  o[k] = function () { if (guard.on) guard.used.add(label + ' at ' + (new Error().stack.split('\\n').slice(2, 4).join(' ').trim())); return f.apply(this, arguments); };
  return f;
});
const realDate = Date;
globalThis.Date = new Proxy(realDate, { construct(t, args, nt) { if (args.length === 0 && guard.on) guard.used.add('new Date()'); return Reflect.construct(t, args, nt); }, apply(t, self, args) { if (guard.on) guard.used.add('Date()'); return Reflect.apply(t, self, args); } });
const { agentMain } = require('./main.js');
const forge = require('node-forge');
guard.on = false;
globalThis.Date = realDate;
watched.forEach(([o, k], i) => { if (originals[i] !== undefined) o[k] = originals[i]; });
for (const [m, what] of [['NativeModule internal/perf/performance', 'the performance global (performance.now)'], ['NativeModule internal/crypto/webcrypto', 'Web Crypto (getRandomValues)']]) if (process.moduleLoadList.includes(m)) guard.used.add(what);
if (guard.used.size > 0) throw new Error('sensor-agent snapshot: evaluating the agent read ' + [...guard.used].join(', ') + ': a snapshot must not carry anything random, clock-based or read from a file');
const prng = forge.random;
if (prng.key !== null || prng.seed !== null || prng.generated !== 0 || prng.reseeds !== 0 || prng.keyBytes !== '' || prng.pools.some((p) => p.messageLength !== 0)) throw new Error("sensor-agent snapshot: node-forge's PRNG was seeded or fed while the agent's modules evaluated");
v8.startupSnapshot.addDeserializeCallback(() => {
  const fresh = prng.createInstance();
  for (const k of Object.keys(fresh)) prng[k] = fresh[k];
});
v8.startupSnapshot.setDeserializeMainFunction(() => {
  // The unit runs \`node FLAGS --snapshot-blob=DIR/sensor-agent.blob DIR/sensor-agent.mjs run ...\`: argv[1] is the
  // tree's bundle, as without a snapshot. Started with no script (\`node --snapshot-blob=B run ...\`), it is the
  // bundle beside the blob.
  if (path.basename(process.argv[1] ?? '') === ${JSON.stringify(BUNDLE_FILE)}) __sa_tree = path.resolve(process.argv[1]);
  else {
    const flag = process.execArgv.findLastIndex((a) => a === '--snapshot-blob' || a.startsWith('--snapshot-blob='));
    const blob = flag < 0 ? undefined : process.execArgv[flag].includes('=') ? process.execArgv[flag].slice(process.execArgv[flag].indexOf('=') + 1) : process.execArgv[flag + 1];
    if (blob === undefined) throw new Error('sensor-agent snapshot: run it with --snapshot-blob=FILE');
    __sa_tree = path.join(path.dirname(path.resolve(blob)), ${JSON.stringify(BUNDLE_FILE)});
    process.argv.splice(1, 0, __sa_tree);
  }
  void agentMain();
});
`;

/**
 * The snapshot entry's preamble: its \`require\` takes built-ins only while the snapshot is built (and
 * after); a file (./native/epoll.node) is required from the agent tree the snapshot was started
 * from (set by the main function above). \`__dirname\` is the board's /opt/sensor-agent, as for the
 * shipped sensor-agent.mjs, not the build's temporary directory: yargs' y18n keeps the locale
 * directory it derives from it at import (../locales, which does not exist: English).
 */
const SNAPSHOT_BANNER =
  "__dirname='/opt/sensor-agent';__filename='/opt/sensor-agent/sensor-agent.mjs';var __sa_builtin=require,__sa_tree,__sa_treeRequire;require=function(id){return /^\\.\\.?\\//.test(id)?(__sa_treeRequire||(__sa_treeRequire=__sa_builtin('node:module').createRequire(__sa_tree)))(id):__sa_builtin(id)};";

const FORGE_WEBCRYPTO_READ = 'var _crypto = globalScope.crypto || globalScope.msCrypto;';
const YARGS_CACHE_HELP = 't||r.getInternalMethods().getUsageInstance().cacheHelpMessage()';

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
      // node-forge's random.js reads `globalThis.crypto` at import (for browsers without a native
      // source: `!isNodejs && !getRandomValues`), which in Node loads all of Web Crypto (internal
      // modules compiled from source with the agent's flags). In Node forge never uses it: its PRNG
      // seeds from node:crypto (prng.js). The bundle's random.js does not read it.
      build.onLoad({ filter: /[\\/]node_modules[\\/]node-forge[\\/]lib[\\/]random\.js$/ }, async (args) => {
        const src = await readFile(args.path, 'utf8');
        if (!src.includes(FORGE_WEBCRYPTO_READ))
          throw new Error(`${args.path} no longer reads Web Crypto as expected: update provisioning/builder/bundle-agent.ts`);
        return { contents: src.replace(FORGE_WEBCRYPTO_READ, 'var _crypto = null;'), loader: 'js', resolveDir: dirname(args.path) };
      });
      // yargs renders the whole --help text after starting a command's handler (cacheHelpMessage, for
      // a later showHelp from yargs' default failure output): about 5 ms of cliui layout at every
      // start. The CLI has its own failure handler (lib/cli.ts .fail) and never shows help after a
      // handler started; --help itself is shown before any handler runs, rendered then.
      build.onLoad({ filter: /[\\/]node_modules[\\/]yargs[\\/]build[\\/]index\.cjs$/ }, async (args) => {
        const src = await readFile(args.path, 'utf8');
        if (!src.includes(YARGS_CACHE_HELP)) throw new Error(`${args.path} no longer caches its help as expected: update provisioning/builder/bundle-agent.ts`);
        return { contents: src.replace(YARGS_CACHE_HELP, 't||void 0'), loader: 'js', resolveDir: dirname(args.path) };
      });
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
        contents: LAZY_HIGHER_ORDER.has(args.path)
          ? `var f;\nmodule.exports = function () { var a = arguments, g; return function () { return (g || (g = (f || (f = require(${JSON.stringify(args.path)}))).apply(null, a))).apply(this, arguments); }; };\n`
          : `var f;\nmodule.exports = function () { return (f || (f = require(${JSON.stringify(args.path)}))).apply(this, arguments); };\n`,
        loader: 'js',
        resolveDir: args.pluginData as string,
      }));
      // yargs' index.cjs makes the classic singleton at import (an instance parsing process.argv,
      // whose .version() looks for a package.json from the working directory up: a file search at
      // every start, and at a snapshot's build). The CLI makes its own instance (lib/cli.ts,
      // `yargs(args)`), never the singleton's: the bundle's yargs is the factory alone.
      build.onLoad({ filter: /[\\/]node_modules[\\/]yargs[\\/]index\.cjs$/ }, async (args) => {
        const src = await readFile(args.path, 'utf8');
        if (!src.includes('Argv(processArgv.hideBin(process.argv));'))
          throw new Error(`${args.path} no longer makes its singleton as expected: update provisioning/builder/bundle-agent.ts`);
        return {
          contents:
            "'use strict';\nconst { Yargs } = require('./build/index.cjs');\nmodule.exports = function Argv(processArgs, cwd) { return Yargs(processArgs, cwd, require); };\n",
          loader: 'js',
          resolveDir: dirname(args.path),
        };
      });
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

/** The bundle's two forms: the ES module that ships and runs (`node sensor-agent.mjs`), or the CommonJS entry a startup snapshot is built from (provisioning/builder/snapshot.ts). */
export type BundleForm = 'module' | 'snapshot-entry';

export async function bundleAgent(repo: string, outfile: string, version: string, form: BundleForm = 'module'): Promise<BundleResult> {
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
      ...(form === 'module'
        ? { entryPoints: [join(repo, 'dist/agent/cli.js')] }
        : { stdin: { contents: SNAPSHOT_ENTRY, resolveDir: join(repo, 'dist/agent'), sourcefile: 'snapshot-entry.js', loader: 'js' as const } }),
      outfile,
      bundle: true,
      platform: 'node',
      format: form === 'module' ? 'esm' : 'cjs',
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
        js:
          form === 'snapshot-entry'
            ? SNAPSHOT_BANNER
            : "import{createRequire as __sa_cr}from'node:module';import{fileURLToPath as __sa_fp}from'node:url';const require=__sa_cr(import.meta.url);const __filename=__sa_fp(import.meta.url);const __dirname=__sa_fp(new URL('.',import.meta.url));",
      },
      // agent/version.ts reads it (`declare const SENSOR_AGENT_VERSION: string | undefined`): the release version.
      define: { SENSOR_AGENT_VERSION: JSON.stringify(version) },
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
