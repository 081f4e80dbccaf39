/**
 * A plain (loopback, no TLS) mosquitto process that a test or the benchmark
 * can stop and start again on the same port, with on-disk persistence so that
 * sessions and queued QoS 1 messages survive a clean restart, as they do in
 * production. Fails (never skips) when mosquitto is missing and
 * REQUIRE_MOSQUITTO=1.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const MOSQUITTO_BIN = ['/usr/sbin/mosquitto', '/usr/bin/mosquitto', '/usr/local/sbin/mosquitto'].find((p) => existsSync(p));

export interface MosquittoOptions {
  /** Persist sessions and queued messages across restarts (default true). */
  persistence?: boolean;
  /** `max_connections` (default -1: unlimited). */
  maxConnections?: number;
  /** File descriptor limit for the broker process (default 8192). */
  nofile?: number;
  /** `max_queued_messages` per client (default 100000; production: 200, provisioning/mosquitto/sensor-broker.conf). */
  maxQueuedMessages?: number;
  /** `set_tcp_nodelay true`: no Nagle delay on small packets (default false, as mosquitto's own default). */
  tcpNoDelay?: boolean;
  /** Called with each line mosquitto logs (subscribe and connect events are logged). */
  onLog?: (line: string) => void;
}

export interface MosquittoProcess {
  url: string;
  port: number;
  dir: string;
  readonly pid: number | undefined;
  readonly running: boolean;
  /** SIGTERM and wait for exit (mosquitto saves its persistence file on the way out). */
  stop(): Promise<void>;
  /** Start again on the same port. */
  start(): Promise<void>;
  /** Stop and remove the directory. */
  close(): Promise<void>;
}

/** true if mosquitto can run here; throws when REQUIRE_MOSQUITTO=1 and it cannot. */
export function mosquittoAvailable(): boolean {
  if (MOSQUITTO_BIN) return true;
  if (process.env.REQUIRE_MOSQUITTO === '1') throw new Error('mosquitto is required (REQUIRE_MOSQUITTO=1) but is not installed');
  return false;
}

export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

async function waitForPort(port: number, child: ChildProcess, log: () => string, timeoutMs = 10_000): Promise<void> {
  const { connect } = await import('node:net');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`mosquitto exited ${child.exitCode}: ${log()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`mosquitto did not listen on ${port} within ${timeoutMs} ms: ${log()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function startMosquittoProcess(options: MosquittoOptions = {}): Promise<MosquittoProcess> {
  if (!mosquittoAvailable() || !MOSQUITTO_BIN) throw new Error('mosquitto is not installed');
  const bin = MOSQUITTO_BIN;
  const dir = await mkdtemp(join(tmpdir(), 'mosquitto-'));
  const port = await freePort();
  const conf = join(dir, 'mosquitto.conf');
  await writeFile(
    conf,
    [
      // Under root, mosquitto would otherwise switch to the 'mosquitto' user and lose the temp dir.
      ...(process.getuid?.() === 0 ? ['user root'] : []),
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      `max_connections ${options.maxConnections ?? -1}`,
      `persistence ${options.persistence === false ? 'false' : 'true'}`,
      `persistence_location ${dir}/`,
      'autosave_interval 0',
      `max_queued_messages ${options.maxQueuedMessages ?? 100000}`,
      'max_inflight_messages 20',
      ...(options.tcpNoDelay ? ['set_tcp_nodelay true'] : []),
      'log_dest stderr', // unbuffered: stdout to a pipe is block-buffered
      'log_type error',
      'log_type warning',
      'log_type notice',
      'log_type subscribe',
      'connection_messages true',
      'log_timestamp false',
      '',
    ].join('\n'),
  );
  let child: ChildProcess | undefined;
  let logTail = '';
  const start = async (): Promise<void> => {
    if (child && child.exitCode === null) return;
    const c = spawn('/bin/sh', ['-c', `ulimit -n ${options.nofile ?? 8192} 2>/dev/null; exec "$0" -c "$1"`, bin, conf], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = c;
    let partial = '';
    const onData = (b: Buffer): void => {
      const text = partial + b.toString('utf8');
      const lines = text.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        logTail = (logTail + line + '\n').slice(-4000);
        options.onLog?.(line);
      }
    };
    c.stdout?.on('data', onData);
    c.stderr?.on('data', onData);
    await waitForPort(port, c, () => logTail);
  };
  const stop = async (): Promise<void> => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      c.once('exit', () => resolve());
      c.kill('SIGTERM');
    });
  };
  await start();
  return {
    url: `mqtt://127.0.0.1:${port}`,
    port,
    dir,
    get pid() {
      return child?.pid;
    },
    get running() {
      return child !== undefined && child.exitCode === null && child.signalCode === null;
    },
    stop,
    start,
    close: async () => {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
