/** A throwaway CA made by provisioning/pki: broker certificate and client certificates. */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PROVISIONING_DIR } from './repo-paths.js';
import { toolEnv } from './tools.js';

const run = promisify(execFile);
export const PKI = join(PROVISIONING_DIR, 'pki');

export interface ClientCredentials {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

export async function pki(args: string[]): Promise<string> {
  const { stdout } = await run(PKI, args, { env: toolEnv() });
  return stdout;
}

/** Makes DIR/ca.*, DIR/broker.* (localhost, 127.0.0.1), and one client certificate per name plus the server's. */
export async function makeTestPki(dir: string, devices: readonly string[]): Promise<void> {
  await pki(['init', dir, '--days', '2']);
  await pki(['broker', dir, '--dns', 'localhost', '--ip', '127.0.0.1', '--days', '2']);
  await pki(['server', dir, '--days', '2']);
  for (const d of devices) await pki(['client', dir, d, '--days', '2']);
}

export async function clientCredentials(dir: string, name: string): Promise<ClientCredentials> {
  const [ca, cert, key] = await Promise.all([
    readFile(join(dir, 'ca.pem')),
    readFile(join(dir, 'clients', `${name}.crt`)),
    readFile(join(dir, 'clients', `${name}.key`)),
  ]);
  return { ca, cert, key };
}
