/**
 * mosquitto with TLS and client certificates, started by a test: a throwaway CA,
 * a server certificate for localhost/127.0.0.1, client certificates on demand.
 * Skips (or, with REQUIRE_MOSQUITTO=1, fails) where mosquitto is not installed.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { NO_MOSQUITTO, skipBecause } from '../helpers/skip.js';

const run = promisify(execFile);

export const MOSQUITTO_BIN = ['/usr/sbin/mosquitto', '/usr/bin/mosquitto', '/usr/local/sbin/mosquitto'].find((p) => existsSync(p));

export interface TlsMosquitto {
  url: string;
  port: number;
  dir: string;
  ca: string;
  /** A client certificate and key signed by the CA, for `cn`. */
  clientCert(cn: string): Promise<{ cert: string; key: string }>;
  stop(): Promise<void>;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  await run('openssl', args, { cwd });
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** `onLog`: each line mosquitto logs, with subscriptions logged too (the bench's start-to-subscribed). */
export async function startTlsMosquitto(options: { acl?: string; onLog?: (line: string) => void } = {}): Promise<TlsMosquitto> {
  if (!MOSQUITTO_BIN) throw new Error('mosquitto is not installed');
  const dir = await mkdtemp(join(tmpdir(), 'mosquitto-tls-'));
  await openssl(
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      'ca.key',
      '-out',
      'ca.pem',
      '-days',
      '2',
      '-subj',
      '/CN=test-ca',
    ],
    dir,
  );
  const sign = async (name: string, cn: string, ext: string): Promise<void> => {
    await openssl(
      ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`],
      dir,
    );
    await writeFile(join(dir, `${name}.ext`), ext);
    await openssl(
      [
        'x509',
        '-req',
        '-in',
        `${name}.csr`,
        '-CA',
        'ca.pem',
        '-CAkey',
        'ca.key',
        '-CAcreateserial',
        '-out',
        `${name}.crt`,
        '-days',
        '2',
        '-extfile',
        `${name}.ext`,
      ],
      dir,
    );
  };
  await sign('server', 'localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  const port = await freePort();
  if (options.acl !== undefined) await writeFile(join(dir, 'acl'), options.acl);
  await writeFile(
    join(dir, 'mosquitto.conf'),
    [
      'user root',
      'persistence false',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      ...(options.onLog ? ['log_type subscribe', 'log_timestamp false'] : []),
      `listener ${port} 127.0.0.1`,
      `cafile ${join(dir, 'ca.pem')}`,
      `certfile ${join(dir, 'server.crt')}`,
      `keyfile ${join(dir, 'server.key')}`,
      'require_certificate true',
      'use_identity_as_username true',
      'allow_anonymous true',
      'set_tcp_nodelay true', // as provisioning/mosquitto/sensor-broker.conf: no CONNACK held ~40 ms behind TLS 1.3's session tickets
      ...(options.acl !== undefined ? [`acl_file ${join(dir, 'acl')}`] : []),
      '',
    ].join('\n'),
  );
  const child: ChildProcess = spawn(MOSQUITTO_BIN, ['-c', join(dir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  let partial = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
    if (!options.onLog) return;
    const lines = (partial + d.toString()).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) options.onLog(line);
  });
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`mosquitto exited ${child.exitCode}: ${stderr}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1', () => (s.destroy(), resolve(true)));
      s.on('error', () => resolve(false));
    });
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`mosquitto did not listen on ${port}: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: `mqtts://localhost:${port}`,
    port,
    dir,
    ca: join(dir, 'ca.pem'),
    clientCert: async (cn) => {
      await sign(`client-${cn}`, cn, 'extendedKeyUsage=clientAuth\n');
      return { cert: join(dir, `client-${cn}.crt`), key: join(dir, `client-${cn}.key`) };
    },
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** In a `before` hook: skip the suite when mosquitto is missing, unless REQUIRE_MOSQUITTO=1. */
export function requireMosquittoOrSkip(ctx: Mocha.Context): void {
  if (MOSQUITTO_BIN) return;
  if (process.env.REQUIRE_MOSQUITTO === '1') throw new Error('REQUIRE_MOSQUITTO=1 but mosquitto is not installed');
  skipBecause(ctx, NO_MOSQUITTO);
}
