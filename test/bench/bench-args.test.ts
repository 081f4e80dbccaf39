/**
 * The benchmark's command line (issue 26): `bench.js --help` prints usage and exits 0 at once
 * instead of starting a four-minute run, an unknown flag exits 2, and the flags .ci/run and the
 * docs use parse as before.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseBenchArgs } from './bench-args.js';

const BENCH = fileURLToPath(new URL('./bench.js', import.meta.url));

function bench(args: string[]): Promise<{ code: number | string; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    // A regression starts the run: killed after 20 s, which fails the exit-code check.
    execFile(process.execPath, [BENCH, ...args], { timeout: 20_000, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: number | string; signal?: string }) | null;
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : (e.signal ?? String(e.code))) : 0, stdout, stderr });
    });
  });
}

describe('bench: command line', function () {
  this.timeout(30_000);

  it('--help prints the usage with the sections and flags and exits 0 without running anything', async function () {
    const r = await bench(['--help']);
    expect(r.code, r.stderr).to.equal(0);
    for (const word of ['--quick', '--only', '--runs', '--node', '--tls', '--no-snapshot', 'protocol', 'agent', 'server', 'e2e', 'rollout', 'footprint'])
      expect(r.stdout, word).to.include(word);
    expect(r.stderr, 'a section started').to.not.match(/protocol: seal/);
  });

  it('an unknown flag or section, or a bad --runs, exits 2 with the error', async function () {
    const r = await bench(['--bogus']);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/^bench: E_USAGE: .*bogus/);
    expect(r.stderr).to.match(/--help/);
    expect((await bench(['--only=agnet'])).stderr).to.match(/E_USAGE: --only: unknown section "agnet"/);
    expect((await bench(['--runs=0'])).code).to.equal(2);
  });

  it('the flags of .ci/run and the docs parse as before', function () {
    expect(parseBenchArgs(['--quick'])).to.deep.include({ quick: true, only: undefined, runs: 1, node: process.execPath, tls: false, snapshot: true });
    expect(parseBenchArgs([])).to.deep.include({ quick: false, runs: 3 });
    const a = parseBenchArgs(['--only=agent', '--runs=5', '--node=/opt/node26/bin/node', '--tls', '--no-snapshot']);
    expect([...(a.only ?? [])]).to.deep.equal(['agent']);
    expect(a).to.deep.include({ runs: 5, node: '/opt/node26/bin/node', tls: true, snapshot: false, quick: false });
    expect([...(parseBenchArgs(['--quick', '--only=rollout']).only ?? [])]).to.deep.equal(['rollout']);
    expect([...(parseBenchArgs(['--only', 'protocol,server']).only ?? [])]).to.deep.equal(['protocol', 'server']);
    expect(() => parseBenchArgs(['--bogus']))
      .to.throw()
      .with.property('code', 'E_USAGE');
  });
});
