/**
 * `npm run bench [-- --quick]`: figures next to their floors, measured in one
 * run on this machine. JSON on stdout, a human summary on stderr.
 */
import { benchProtocol } from './protocol.js';

const quick = process.argv.includes('--quick');

const results: Record<string, unknown> = {
  machine: { node: process.version, arch: process.arch, quick },
  protocol: await benchProtocol(quick ? 200 : 2000),
};

process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
const p = results.protocol as Awaited<ReturnType<typeof benchProtocol>>;
process.stderr.write(
  [
    `protocol (${p.iterations} iterations each)`,
    `  seal        ${p.seal_ms.toFixed(3)} ms   floor ${p.seal_floor_ms.toFixed(3)} ms   ratio ${p.seal_ratio.toFixed(2)}x`,
    `  open+verify ${p.open_verify_ms.toFixed(3)} ms   floor ${p.open_verify_floor_ms.toFixed(3)} ms   ratio ${p.open_verify_ratio.toFixed(2)}x`,
    '',
  ].join('\n'),
);
