/** Runs the built `provision-server` CLI as a child process. */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startEmbeddedBroker, type EmbeddedBroker } from './sim-fleet.js';

export const SERVER_CLI = fileURLToPath(new URL('../../server/cli.js', import.meta.url));

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runServerCli(args: string[], options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [SERVER_CLI, ...args], { env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A data directory made by `provision-server init` against an embedded broker; filled by the suite's `before` hook. */
export interface InitializedDataDir {
  /** The temporary directory holding it, removed after the suite. */
  dir: string;
  /** The data directory (dir/data). */
  data: string;
  broker: EmbeddedBroker;
}

/**
 * Registers a suite's hooks: before it, a temporary directory (named from
 * `prefix`), an embedded broker and `provision-server init --data DIR/data
 * --broker URL`, which must exit 0; after it, the broker closed and the
 * directory removed.
 */
export function useInitializedDataDir(prefix: string): InitializedDataDir {
  const suite = {} as InitializedDataDir;
  before(async () => {
    suite.dir = await mkdtemp(join(tmpdir(), prefix));
    suite.data = join(suite.dir, 'data');
    suite.broker = await startEmbeddedBroker();
    const r = await runServerCli(['init', '--data', suite.data, '--broker', suite.broker.url]);
    expect(r.code, r.stderr).to.equal(0);
  });
  after(async () => {
    await suite.broker.close();
    await rm(suite.dir, { recursive: true, force: true });
  });
  return suite;
}
