/** A minimal built agent tree and bundles shaped like `provision-server bundle` output, for the flash tests. */
import { chmod, mkdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

async function put(root: string, rel: string, content: string, mode = 0o644): Promise<void> {
  await mkdir(dirname(join(root, rel)), { recursive: true });
  await writeFile(join(root, rel), content);
  await chmod(join(root, rel), mode);
}

/** package.json, dist/agent, dist/protocol (+ dist/server and dist/test, which must not ship), node_modules with a .bin link. */
export async function makeAgentTree(root: string, options: { devDeps?: boolean; noCli?: boolean } = {}): Promise<void> {
  await put(root, 'package.json', JSON.stringify({ name: 'sealed-provisioning', type: 'module', dependencies: { mqtt: '5' }, devDependencies: { typescript: '5' } }));
  if (!options.noCli) await put(root, 'dist/agent/cli.js', '#!/usr/bin/env node\nconsole.log("agent");\n');
  await put(root, 'dist/agent/runtime.js', 'export {};\n');
  await put(root, 'dist/protocol/index.js', 'export {};\n');
  await put(root, 'dist/server/cli.js', 'server only\n');
  await put(root, 'dist/test/x.test.js', 'test only\n');
  await put(root, 'node_modules/mqtt/package.json', '{"name":"mqtt"}');
  await put(root, 'node_modules/mqtt/bin/mqtt.js', '#!/usr/bin/env node\n', 0o755);
  await mkdir(join(root, 'node_modules/.bin'), { recursive: true });
  await symlink('../mqtt/bin/mqtt.js', join(root, 'node_modules/.bin/mqtt'));
  if (options.devDeps) await put(root, 'node_modules/typescript/package.json', '{"name":"typescript"}');
}

export interface FakeBundle {
  dir: string;
  token: string;
  clientKey: string;
  signingKey: string;
}

/** A bundle as `provision-server bundle` writes it (secrets 0600), optionally with keys made on the host. */
export async function makeBundle(dir: string, deviceId: string, options: { keys?: boolean; hooks?: boolean } = {}): Promise<FakeBundle> {
  const token = `token-${deviceId}-${'x'.repeat(20)}`;
  const clientKey = `-----BEGIN PRIVATE KEY-----\nclient-key-of-${deviceId}\n-----END PRIVATE KEY-----\n`;
  const signingKey = JSON.stringify({ kty: 'EC', crv: 'P-256', d: `secret-d-of-${deviceId}`, x: 'x', y: 'y', use: 'sig', alg: 'ES256', kid: 'k1' });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const config: Record<string, unknown> = {
    device_id: deviceId,
    server_id: 'provision-server',
    topic_prefix: 'provision',
    broker: { url: 'mqtts://broker.example.net:8883', ca: 'ca.pem', cert: 'client.crt', key: 'client.key', protocol_version: 4, allow_insecure: false },
    keystore: 'keys',
    trust: 'trust.jwks',
    state_dir: 'state',
    enrollment_token: 'enroll.token',
    gpio: { backend: 'auto' },
    log_level: 'info',
  };
  if (options.hooks) {
    config.hooks_dir = 'hooks';
    await put(dir, 'hooks/update', '#!/bin/sh\ncat >/dev/null\n', 0o755);
  }
  await put(dir, 'config.json', `${JSON.stringify(config, null, 2)}\n`);
  await put(dir, 'trust.jwks', '{"keys":[{"kty":"EC","crv":"P-256","x":"a","y":"b","use":"sig","kid":"s1"}]}\n');
  await put(dir, 'ca.pem', '-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n');
  await put(dir, 'client.crt', '-----BEGIN CERTIFICATE-----\nclient\n-----END CERTIFICATE-----\n', 0o600);
  await put(dir, 'client.key', clientKey, 0o600);
  await put(dir, 'enroll.token', `${token}\n`, 0o600);
  if (options.keys) {
    await mkdir(join(dir, 'keys'), { mode: 0o700 });
    await put(dir, 'keys/signing.jwk', `${signingKey}\n`, 0o600);
    await put(dir, 'keys/encryption.jwk', `${signingKey.replace('sig', 'enc')}\n`, 0o600);
  }
  return { dir, token, clientKey, signingKey };
}
