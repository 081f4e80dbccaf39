/** A minimal built agent tree and bundles shaped like `provision-server bundle` output, for the flash tests. */
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

async function put(root: string, rel: string, content: string, mode = 0o644): Promise<void> {
  await mkdir(dirname(join(root, rel)), { recursive: true });
  await writeFile(join(root, rel), content);
  await chmod(join(root, rel), mode);
}

/** The first 20 bytes of an ELF file for `machine` (e_machine at 18), as flash reads them. */
export function elfHeaderFor(machine: number): Buffer {
  const b = Buffer.alloc(64);
  b.writeUInt32BE(0x7f454c46, 0);
  b[4] = 2;
  b[5] = 1;
  b.writeUInt16LE(machine, 18);
  return b;
}

export const EM = { x86_64: 0x3e, aarch64: 0xb7, arm: 0x28 } as const;

export interface AgentTreeSpec {
  /** Tree for arm64 (default), armv7 or x64. */
  arch?: 'arm64' | 'armv7' | 'x64';
  /** Where its Node comes from (default npm: node/bin/node ships). */
  node?: 'npm' | 'system';
  /** Node ABI it was built for (default 147 for npm, 115 for system). */
  abi?: string;
  /** Leave out the GPIO addon (--gpio omit). */
  noAddon?: boolean;
  /** Leave out sensor-agent.mjs. */
  noBundle?: boolean;
  /** ELF machine of the addon file, if not the tree's own. */
  addonMachine?: number;
}

/** A tree shaped like provisioning/build-agent's (docs/CONTRACTS.md, "Agent tree"), with stand-in binaries. */
export async function makeAgentTree(root: string, spec: AgentTreeSpec = {}): Promise<void> {
  const arch = spec.arch ?? 'arm64';
  const [em, elf] = arch === 'arm64' ? [EM.aarch64, 'aarch64'] : arch === 'armv7' ? [EM.arm, 'arm'] : [EM.x86_64, 'x86-64'];
  const source = spec.node ?? 'npm';
  const abi = spec.abi ?? (source === 'system' ? '115' : '147');
  const version = source === 'system' ? '20.19.2' : '26.12.1';
  if (!spec.noBundle) await put(root, 'sensor-agent.mjs', '#!/usr/bin/env node\nconsole.log("agent");\n', 0o755);
  await put(root, 'sensor-agent.mjs.LEGAL.txt', 'licences\n');
  if (!spec.noAddon) {
    await mkdir(join(root, 'native'), { recursive: true });
    await writeFile(join(root, 'native/epoll.node'), elfHeaderFor(spec.addonMachine ?? em));
    await chmod(join(root, 'native/epoll.node'), 0o755);
  }
  if (source !== 'system') {
    await mkdir(join(root, 'node/bin'), { recursive: true });
    await writeFile(join(root, 'node/bin/node'), elfHeaderFor(em));
    await chmod(join(root, 'node/bin/node'), 0o755);
    await put(root, 'node/LICENSE', 'Node.js licence\n');
  }
  const info = {
    format: 2,
    agent_version: '0.1.0',
    arch,
    elf_machine: elf,
    node: { source, version, abi, path: source === 'system' ? '/usr/bin/node' : 'node/bin/node' },
    gpio: spec.noAddon ? 'omit' : 'native',
    addon: spec.noAddon ? null : { path: 'native/epoll.node', elf_machine: elf, abi },
    bundle: 'sensor-agent.mjs',
    built_on: 'x64',
    built_at: '2026-12-01T00:00:00.000Z',
  };
  await put(root, '.build-info.json', `${JSON.stringify(info, null, 2)}\n`);
  // Not part of a tree: never shipped.
  await put(root, 'stray/notes.txt', 'not shipped\n');
}

export interface FakeBundle {
  dir: string;
  token: string;
  clientKey: string;
  signingKey: string;
}

/** A bundle as `provision-server bundle` writes it (secrets 0600), optionally with keys made on the host. */
export async function makeBundle(dir: string, deviceId: string, options: { keys?: boolean; hooks?: boolean; releaseKeys?: boolean } = {}): Promise<FakeBundle> {
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
  // The release key's public set (provision-server bundle writes it beside trust.jwks).
  if (options.releaseKeys !== false) await put(dir, 'release.jwks', '{"keys":[{"kty":"EC","crv":"P-256","x":"r","y":"s","use":"sig","kid":"r1"}]}\n');
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
