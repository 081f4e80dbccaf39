/**
 * `bundle`: everything a board needs at flashing, in one directory (docs/CONTRACTS.md):
 * config.json (relative paths), trust.jwks, release.jwks (the release keys boards pin to
 * verify agent upgrades; absent when the data directory has none), ca.pem, client.crt/client.key, enroll.token,
 * and with keys made on the host, keys/ holding the key store files.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { assertValidId, CodedError, generateEncryptionKey, generateSigningKey, toJwkSet, type PrivateJwk, toPublicJwk } from '../../protocol/index.js';
import { DEFAULT_DEVICE_MQTT_VERSION, type BrokerSettings, type MqttVersion, type OpenedData } from '../data-dir.js';
import { readReleaseJwks, RELEASE_JWKS_FILE, releaseJwksPath } from '../keys/release-key.js';
import { writeFileAtomic } from '../../lib/durable-file.js';
import { ensurePrivateDir } from '../../lib/fs.js';

export interface BundleOptions {
  deviceId: string;
  userId: string;
  outDir: string;
  /** The broker as the board reaches it (default: what `init` recorded). */
  broker?: BrokerSettings;
  /** Token lifetime in ms (default 7 days: flashing and first boot may be days apart). */
  tokenTtlMs?: number;
  /** Generate the device keys here and register them (for boards that cannot generate keys). */
  keysOnHost?: boolean;
  /** With keysOnHost: an RSA encryption key instead of P-256. */
  rsa?: boolean;
  gpioBackend?: 'auto' | 'onoff' | 'fake' | 'none';
  /** Overwrite files in an existing non-empty output directory. */
  force?: boolean;
  /** The MQTT version in config.json (default: what `init` recorded, else 5). */
  mqttVersion?: MqttVersion;
}

export interface BundleResult {
  dir: string;
  configPath: string;
  tokenExpiresAt: number;
  files: string[];
}

export const DEFAULT_BUNDLE_TOKEN_TTL_MS = 7 * 24 * 3600 * 1000;

export async function writeBundle(data: OpenedData, options: BundleOptions): Promise<BundleResult> {
  assertValidId(options.deviceId);
  const dir = resolve(options.outDir);
  const broker = options.broker ?? data.config.broker;
  // Everything is checked and read before the output directory is created: a refusal leaves nothing behind.
  let url: URL;
  try {
    url = new URL(broker.url);
  } catch {
    throw new CodedError('E_USAGE', `broker URL "${broker.url}" is not a URL like mqtts://host:8883`);
  }
  if (url.protocol !== 'mqtt:' && url.protocol !== 'mqtts:') throw new CodedError('E_USAGE', `broker URL ${broker.url} must be mqtt:// or mqtts://`);
  if (Boolean(broker.cert) !== Boolean(broker.key)) throw new CodedError('E_USAGE', '--client-cert and --client-key go together');
  const caPem = broker.ca ? await readInput(broker.ca) : undefined;
  const certPem = broker.cert ? await readInput(broker.cert) : undefined;
  const keyPem = broker.key ? await readInput(broker.key) : undefined;
  // Checked (a JWK set of signing keys) before anything is written.
  const releaseKeys = await readReleaseJwks(data.paths.dir);
  const releaseJwks = releaseKeys === undefined ? undefined : `${JSON.stringify(toJwkSet(releaseKeys), null, 2)}\n`;
  if (url.protocol === 'mqtt:' && !['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) {
    process.stderr.write(`provision-server: warning: ${broker.url} is not TLS; the agent refuses plain MQTT except on loopback unless allow_insecure is set\n`);
  }
  if (!options.force) {
    const present = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [];
      throw new CodedError('E_NO_FILE', `cannot use ${dir} as the bundle directory: ${err.code ?? err.message}`);
    });
    if (present.length > 0)
      throw new CodedError('E_EXISTS', `${dir} is not empty (it may hold another board's bundle); choose a new --out, or pass --force to overwrite it`);
    const known = options.keysOnHost ? await data.storage.devices.get(options.deviceId) : undefined;
    if (known && known.state !== 'decommissioned') {
      throw new CodedError(
        'E_EXISTS',
        `device ${options.deviceId} is already registered (state ${known.state}); --keys-on-host would replace its keys and cut the board off until it is re-flashed. Pass --force to do that, or bundle without --keys-on-host`,
      );
    }
  }
  await ensurePrivateDir(dir);
  const files: string[] = [];
  const write = async (name: string, text: string | Buffer, mode: number): Promise<void> => {
    await writeFileAtomic(join(dir, name), text, { mode });
    files.push(name);
  };

  const brokerConfig: Record<string, unknown> = { url: broker.url };
  if (caPem) {
    await write('ca.pem', caPem, 0o644);
    brokerConfig.ca = 'ca.pem';
  }
  if (certPem && keyPem) {
    await write('client.crt', certPem, 0o600);
    await write('client.key', keyPem, 0o600);
    brokerConfig.cert = 'client.crt';
    brokerConfig.key = 'client.key';
  }
  // MQTT 5 by default: the agent's Maximum Packet Size goes in its CONNECT, so the broker drops a message
  // too big for the board instead of sending it (and re-sending it at every reconnect under 3.1.1).
  brokerConfig.protocol_version = options.mqttVersion ?? data.config.deviceMqttVersion ?? DEFAULT_DEVICE_MQTT_VERSION;
  brokerConfig.allow_insecure = false;

  await write('trust.jwks', `${JSON.stringify(data.keys.trust, null, 2)}\n`, 0o644);
  if (releaseJwks !== undefined) await write(RELEASE_JWKS_FILE, releaseJwks, 0o644);
  else
    process.stderr.write(
      `provision-server: warning: ${releaseJwksPath(data.paths.dir)} does not exist: this board will refuse agent upgrades (E_UPGRADE_UNSUPPORTED); make a release key with: provision-server release keygen\n`,
    );

  if (options.keysOnHost) {
    const [signing, encryption] = await Promise.all([generateSigningKey(), generateEncryptionKey(options.rsa ? { type: 'rsa' } : {})]);
    const keysDir = join(dir, 'keys');
    await ensurePrivateDir(keysDir);
    await writeKey(keysDir, 'signing.jwk', signing);
    await writeKey(keysDir, 'encryption.jwk', encryption);
    files.push('keys/signing.jwk', 'keys/encryption.jwk');
    await data.storage.devices.add(
      { id: options.deviceId, userId: options.userId, origin: 'host-keys', signing: toPublicJwk(signing), encryption: toPublicJwk(encryption) },
      { replace: true },
    );
  }

  const { token, expiresAt } = await data.storage.enrollment.createToken(options.deviceId, options.userId, options.tokenTtlMs ?? DEFAULT_BUNDLE_TOKEN_TTL_MS);
  await write('enroll.token', `${token}\n`, 0o600);

  const config = {
    device_id: options.deviceId,
    server_id: data.keys.serverId,
    topic_prefix: data.config.topicPrefix,
    broker: brokerConfig,
    keystore: 'keys',
    trust: 'trust.jwks',
    state_dir: 'state',
    enrollment_token: 'enroll.token',
    gpio: { backend: options.gpioBackend ?? 'auto' },
    log_level: 'info',
  };
  await write('config.json', `${JSON.stringify(config, null, 2)}\n`, 0o644);
  await data.storage.audit.append('bundle.create', options.deviceId, { user_id: options.userId, keys_on_host: Boolean(options.keysOnHost), out: dir });
  return { dir, configPath: join(dir, 'config.json'), tokenExpiresAt: expiresAt, files };
}

async function writeKey(dir: string, name: string, jwk: PrivateJwk): Promise<void> {
  await writeFileAtomic(join(dir, name), `${JSON.stringify(jwk)}\n`, { mode: 0o600 });
}

async function readInput(from: string): Promise<Buffer> {
  try {
    return await readFile(from);
  } catch (err) {
    throw new CodedError('E_NO_FILE', `cannot read ${from}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}
