/** A `provision-server serve` child process, ready once it logged serve.ready. */
import { spawn, type ChildProcess } from 'node:child_process';
import { SERVER_CLI } from './run-cli.js';

export interface ServeProcess {
  child: ChildProcess;
  log(): string;
  stop(): Promise<number | null>;
}

export async function startServeProcess(args: string[], timeoutMs = 15_000): Promise<ServeProcess> {
  const child = spawn(process.execPath, [SERVER_CLI, 'serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + timeoutMs;
  while (!/serve\.ready/.test(log)) {
    if (child.exitCode !== null) throw new Error(`serve exited ${child.exitCode}: ${log}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`serve not ready within ${timeoutMs} ms: ${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    child,
    log: () => log,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}
