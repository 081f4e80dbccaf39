/**
 * Real brokers for tests: aedes in process (MQTT 3.1.1) and mosquitto as a
 * child process on a free loopback port, optionally with TLS (a throwaway CA
 * and server certificate made with openssl in a temp dir) and persistence
 * (so a restart keeps persistent sessions and their queued QoS 1 messages).
 *
 * mosquitto is looked up at /usr/sbin/mosquitto (or MOSQUITTO=path). When it
 * is missing, `mosquittoAvailable()` is false so a suite can skip, unless
 * REQUIRE_MOSQUITTO=1, which makes `startMosquitto` fail instead.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { access, constants, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createConnection, createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Aedes, type Client } from 'aedes';

const run = promisify(execFile);

export const MOSQUITTO = process.env.MOSQUITTO ?? '/usr/sbin/mosquitto';

export interface AedesBroker {
  url: string;
  port: number;
  stop(): Promise<void>;
  /**
   * Cuts the connection of `clientId` at the broker's side, as a network loss would (the persistent
   * session and its unacknowledged QoS 1 messages stay, redelivered at the reconnect). False when
   * that client is not connected.
   */
  dropClient(clientId: string): boolean;
}

export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/** aedes on a free loopback port (or `port`). */
export async function startAedes(options: { port?: number } = {}): Promise<AedesBroker> {
  const broker = await Aedes.createBroker();
  const connected = new Map<string, Client>();
  broker.on('client', (c) => connected.set(c.id, c));
  broker.on('clientDisconnect', (c) => {
    if (connected.get(c.id) === c) connected.delete(c.id);
  });
  const server: Server = createServer(broker.handle);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  let stopped = false;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    port,
    dropClient: (clientId) => {
      const client = connected.get(clientId);
      if (!client) return false;
      client.conn.destroy();
      return true;
    },
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        broker.close(() => undefined);
      });
    },
  };
}

export async function mosquittoAvailable(): Promise<boolean> {
  try {
    await access(MOSQUITTO, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export interface MosquittoBroker {
  url: string;
  port: number;
  /** PEM file of the CA that signed the server certificate (TLS only; else undefined). */
  caFile: string | undefined;
  /** The temp directory holding config, certificates and persistence. */
  dir: string;
  /** Stops (SIGTERM, waits: the session store is saved) and starts again on the same port. */
  restart(): Promise<void>;
  /** Stops it; the broker can be started again with `start()`. */
  halt(): Promise<void>;
  start(): Promise<void>;
  /** Stops it for good and removes the temp directory. */
  stop(): Promise<void>;
}

export interface MosquittoOptions {
  tls?: boolean;
  /** Keep sessions and queued messages across restarts (default true). */
  persistence?: boolean;
}

/** Makes a CA and a server certificate for 127.0.0.1/localhost (EC P-256) in `dir`; returns the file paths. */
export async function makeTestCertificates(dir: string): Promise<{ caFile: string; certFile: string; keyFile: string; caKeyFile: string }> {
  const p = (n: string): string => join(dir, n);
  await run('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', p('ca.key')]);
  await run('openssl', ['req', '-x509', '-new', '-key', p('ca.key'), '-sha256', '-days', '2', '-subj', '/CN=sensor-agent test CA', '-out', p('ca.pem')]);
  await run('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', p('server.key')]);
  await run('openssl', ['req', '-new', '-key', p('server.key'), '-subj', '/CN=localhost', '-out', p('server.csr')]);
  await writeFile(p('server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  await run('openssl', [
    'x509',
    '-req',
    '-in',
    p('server.csr'),
    '-CA',
    p('ca.pem'),
    '-CAkey',
    p('ca.key'),
    '-CAcreateserial',
    '-days',
    '2',
    '-sha256',
    '-extfile',
    p('server.ext'),
    '-out',
    p('server.crt'),
  ]);
  return { caFile: p('ca.pem'), certFile: p('server.crt'), keyFile: p('server.key'), caKeyFile: p('ca.key') };
}

/** mosquitto on a free loopback port; TLS with a throwaway CA when `tls`. */
export async function startMosquitto(options: MosquittoOptions = {}): Promise<MosquittoBroker> {
  if (!(await mosquittoAvailable())) {
    throw new Error(`mosquitto not found at ${MOSQUITTO} (apt-get install mosquitto, or set MOSQUITTO=path)`);
  }
  const dir = await mkdtemp(join(tmpdir(), 'mosq-'));
  const port = await freePort();
  const lines = [`listener ${port} 127.0.0.1`, 'allow_anonymous true', 'user root', 'log_dest stderr', 'log_type error', 'log_type warning'];
  let caFile: string | undefined;
  if (options.tls) {
    const certs = await makeTestCertificates(dir);
    caFile = certs.caFile;
    lines.push(`cafile ${certs.caFile}`, `certfile ${certs.certFile}`, `keyfile ${certs.keyFile}`, 'tls_version tlsv1.2');
  }
  if (options.persistence !== false) lines.push('persistence true', `persistence_location ${dir}/`, 'autosave_interval 1');
  const conf = join(dir, 'mosquitto.conf');
  await writeFile(conf, `${lines.join('\n')}\n`);

  let child: ChildProcess | undefined;
  let output = '';
  const start = async (): Promise<void> => {
    if (child) return;
    const c = spawn(MOSQUITTO, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
    child = c;
    c.stderr?.on('data', (d: Buffer) => {
      output = (output + d.toString()).slice(-4000);
    });
    c.once('exit', () => {
      if (child === c) child = undefined;
    });
    await waitForPort(port, 5000, () => (child === c ? undefined : `mosquitto exited: ${output}`));
  };
  const halt = async (): Promise<void> => {
    const c = child;
    if (!c) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(t);
    child = undefined;
  };
  await start();
  return {
    url: `${options.tls ? 'mqtts' : 'mqtt'}://127.0.0.1:${port}`,
    port,
    caFile,
    dir,
    start,
    halt,
    restart: async () => {
      await halt();
      await start();
    },
    stop: async () => {
      await halt();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port. */
export async function waitForPort(port: number, timeoutMs: number, failed: () => string | undefined = () => undefined): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const why = failed();
    if (why !== undefined) throw new Error(why);
    const ok = await new Promise<boolean>((resolve) => {
      const s = createConnection({ port, host: '127.0.0.1' });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Whether the mosquitto suites should run: true if available; throws when REQUIRE_MOSQUITTO=1 and it is not. */
export async function shouldRunMosquitto(): Promise<boolean> {
  const ok = await mosquittoAvailable();
  if (!ok && process.env.REQUIRE_MOSQUITTO === '1') throw new Error(`REQUIRE_MOSQUITTO=1 but mosquitto is not at ${MOSQUITTO}`);
  return ok;
}
