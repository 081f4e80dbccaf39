/**
 * The server's data directory:
 *   DATA/keys/            server keys, as `keys init` makes them
 *   DATA/registry.sqlite  the device registry (the default: server.json's `registry`, --registry or
 *                         env PROVISION_SERVER_REGISTRY may name another SQLite file or a postgres:// URL)
 *   DATA/server.json      broker defaults recorded by `init` (url, ca, cert, key, topic prefix)
 *   DATA/http.token       bearer token of the HTTP API (0600)
 *   DATA/keys/release.jwk DATA/release.jwks  the release key and its public set (server/keys/release-key.ts)
 *   DATA/releases/        agent releases (server/releases/store.ts)
 */
import { randomBytes } from 'node:crypto';
import { chmod, lstat, readFile } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { assertValidPrefix, CodedError, DEFAULT_TOPIC_PREFIX, isRecord } from '../protocol/index.js';
import { writeFileAtomic } from '../lib/durable-file.js';
import { ensurePrivateDir, exists } from '../lib/fs.js';
import { isPostgresUrl, openStorage, parseRegistryLocation, REGISTRY_ENV, type RegistryLocation } from './storage/open.js';
import type { Storage } from './storage/types.js';
import { generateReleaseKey } from './keys/release-key.js';
import { initServerKeys, loadServerKeys, type ServerKeys } from './keys/server-keys.js';

export const DEFAULT_DATA_DIR = '/var/lib/provision-server';
export const DEFAULT_BROKER_URL = 'mqtts://localhost:8883';

/** `--data` default: env PROVISION_SERVER_DATA, else /var/lib/provision-server. */
export function defaultDataDir(): string {
  return process.env.PROVISION_SERVER_DATA || DEFAULT_DATA_DIR;
}

/** How to reach the broker: URL and, for TLS, the CA to pin and an optional client certificate (file paths). */
export interface BrokerSettings {
  url: string;
  ca?: string;
  cert?: string;
  key?: string;
}

export interface ServerConfig {
  broker: BrokerSettings;
  /**
   * The broker as boards reach it, when it differs from the server's own
   * connection (production: devices on 8883 with the device CA, the server on
   * the backend listener). `bundle` defaults to it.
   */
  deviceBroker?: BrokerSettings;
  /**
   * The MQTT version boards speak to their broker (`bundle`'s default): 5 unless `init
   * --device-mqtt-version 4` recorded that the boards' broker only speaks 3.1.1.
   */
  deviceMqttVersion?: MqttVersion;
  topicPrefix: string;
  /** The registry `init --registry` recorded (a postgres:// URL or a SQLite path), when any. */
  registry?: string;
}

/** MQTT 3.1.1 (4) or 5. */
export type MqttVersion = 4 | 5;

/** Boards speak MQTT 5 unless told otherwise: their Maximum Packet Size is then in CONNECT, and the broker drops what is bigger. */
export const DEFAULT_DEVICE_MQTT_VERSION: MqttVersion = 5;

export interface DataPaths {
  dir: string;
  keys: string;
  registry: string;
  config: string;
  httpToken: string;
}

export function dataPaths(dir: string): DataPaths {
  const abs = resolve(dir);
  return { dir: abs, keys: join(abs, 'keys'), registry: join(abs, 'registry.sqlite'), config: join(abs, 'server.json'), httpToken: join(abs, 'http.token') };
}

export interface InitOptions {
  serverId?: string;
  broker?: BrokerSettings;
  /** URL (and CA) boards use, when not the server's own. */
  deviceBroker?: BrokerSettings;
  /** Recorded only when given (absent: the default, 5). */
  deviceMqttVersion?: MqttVersion;
  topicPrefix?: string;
  force?: boolean;
  /** The registry (a postgres:// URL or a SQLite path): recorded in server.json when given; default DATA/registry.sqlite. */
  registry?: string;
}

/** What `init` made: the paths, and where the registry is. */
export interface InitResult extends DataPaths {
  registryLocation: RegistryLocation;
}

/**
 * Creates keys, registry, recorded broker defaults and the HTTP bearer token.
 * The registry: options.registry (recorded in server.json), else the one env
 * PROVISION_SERVER_REGISTRY names (not recorded), else DATA/registry.sqlite.
 */
export async function initDataDir(dir: string, options: InitOptions = {}): Promise<InitResult> {
  const paths = dataPaths(dir);
  const prefix = options.topicPrefix ?? DEFAULT_TOPIC_PREFIX;
  assertValidPrefix(prefix);
  const given = options.registry !== undefined ? parseRegistryLocation(options.registry) : undefined;
  const env = process.env[REGISTRY_ENV];
  const named = given ?? (env !== undefined && env.trim() !== '' ? parseRegistryLocation(env) : undefined);
  const location: RegistryLocation =
    named?.kind === 'sqlite' ? { kind: 'sqlite', path: resolve(named.path) } : (named ?? { kind: 'sqlite', path: paths.registry });
  // A PostgreSQL registry is reached (and migrated) before anything is made: one that cannot be reached leaves no keys behind.
  if (location.kind === 'postgres') await (await openStorage(location, { create: true })).close();
  await ensurePrivateDir(paths.dir);
  await initServerKeys(paths.keys, { ...(options.serverId ? { serverId: options.serverId } : {}), ...(options.force ? { force: true } : {}) });
  // The release key (server/keys/release-key.ts): made with the data directory; kept when it exists and keys are not replaced.
  if (options.force || !(await exists(join(paths.keys, 'release.jwk')))) {
    await generateReleaseKey(paths.dir, { force: true });
  }
  // Created (SQLite: the file; PostgreSQL: the schema migrated) now, so serve and the commands find it.
  if (location.kind === 'sqlite') {
    await (await openStorage(location, { create: true })).close();
    await chmod(location.path, 0o600);
  }
  const broker = options.broker ?? { url: DEFAULT_BROKER_URL };
  const recorded: Record<string, unknown> = {
    broker: { url: broker.url, ...absolutePaths(broker) },
    ...(options.deviceBroker
      ? {
          device_broker: {
            url: options.deviceBroker.url,
            ...absolutePaths({ url: options.deviceBroker.url, ...(options.deviceBroker.ca ? { ca: options.deviceBroker.ca } : {}) }),
          },
        }
      : {}),
    ...(options.deviceMqttVersion !== undefined ? { device_mqtt_version: options.deviceMqttVersion } : {}),
    topic_prefix: prefix,
    ...(given ? { registry: location.kind === 'sqlite' ? location.path : location.url } : {}),
  };
  await writeFileAtomic(paths.config, `${JSON.stringify(recorded, null, 2)}\n`, { mode: serverConfigMode(recorded) });
  if (options.force || !(await exists(paths.httpToken))) {
    await writeFileAtomic(paths.httpToken, `${randomBytes(32).toString('base64url')}\n`, { mode: 0o600 });
  }
  return { ...paths, registryLocation: location };
}

/**
 * server.json's mode: 0644, or 0600 when its `registry` is a URL carrying a
 * password (better kept out of it: ~/.pgpass or PGPASSWORD, which node-postgres reads).
 */
export function serverConfigMode(recorded: Record<string, unknown>): number {
  const r = recorded.registry;
  if (typeof r !== 'string' || !isPostgresUrl(r)) return 0o644;
  try {
    return new URL(r).password !== '' ? 0o600 : 0o644;
  } catch {
    return 0o600;
  }
}

function absolutePaths(b: BrokerSettings): Partial<BrokerSettings> {
  const out: Partial<BrokerSettings> = {};
  for (const k of ['ca', 'cert', 'key'] as const) {
    const v = b[k];
    if (v !== undefined) out[k] = isAbsolute(v) ? v : resolve(v);
  }
  return out;
}

export async function readServerConfig(dir: string): Promise<ServerConfig> {
  const paths = dataPaths(dir);
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(paths.config, 'utf8')) as unknown;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new CodedError('E_NO_DATA', `${paths.config} does not exist; run: provision-server init --data ${dir}`);
    }
    throw new CodedError('E_CONFIG', `${paths.config} is not valid JSON`);
  }
  if (!isRecord(raw) || !isRecord(raw.broker) || typeof raw.broker.url !== 'string') throw new CodedError('E_CONFIG', `${paths.config}: "broker.url" missing`);
  const broker: BrokerSettings = { url: raw.broker.url };
  for (const k of ['ca', 'cert', 'key'] as const) {
    const v = raw.broker[k];
    if (typeof v === 'string') broker[k] = v;
  }
  let deviceBroker: BrokerSettings | undefined;
  if (raw.device_broker !== undefined) {
    if (!isRecord(raw.device_broker) || typeof raw.device_broker.url !== 'string')
      throw new CodedError('E_CONFIG', `${paths.config}: "device_broker.url" missing`);
    deviceBroker = { url: raw.device_broker.url, ...(typeof raw.device_broker.ca === 'string' ? { ca: raw.device_broker.ca } : {}) };
  }
  let deviceMqttVersion: MqttVersion | undefined;
  if (raw.device_mqtt_version !== undefined) {
    if (raw.device_mqtt_version !== 4 && raw.device_mqtt_version !== 5)
      throw new CodedError('E_CONFIG', `${paths.config}: "device_mqtt_version" must be 4 (MQTT 3.1.1) or 5`);
    deviceMqttVersion = raw.device_mqtt_version;
  }
  const topicPrefix = typeof raw.topic_prefix === 'string' ? raw.topic_prefix : DEFAULT_TOPIC_PREFIX;
  assertValidPrefix(topicPrefix);
  if (raw.registry !== undefined && (typeof raw.registry !== 'string' || raw.registry.trim() === ''))
    throw new CodedError('E_CONFIG', `${paths.config}: "registry" must be a postgres:// URL or a SQLite file path`);
  const registry = raw.registry;
  return {
    broker,
    ...(deviceBroker ? { deviceBroker } : {}),
    ...(deviceMqttVersion !== undefined ? { deviceMqttVersion } : {}),
    topicPrefix,
    ...(registry !== undefined ? { registry } : {}),
  };
}

/** Overrides from the command line win over what `init` recorded. */
export function brokerFrom(
  recorded: BrokerSettings,
  override: { broker?: string | undefined; ca?: string | undefined; cert?: string | undefined; key?: string | undefined },
): BrokerSettings {
  if (override.broker === undefined) {
    return {
      ...recorded,
      ...(override.ca ? { ca: override.ca } : {}),
      ...(override.cert ? { cert: override.cert } : {}),
      ...(override.key ? { key: override.key } : {}),
    };
  }
  const out: BrokerSettings = { url: override.broker };
  if (override.ca) out.ca = override.ca;
  if (override.cert) out.cert = override.cert;
  if (override.key) out.key = override.key;
  return out;
}

export interface OpenedData {
  paths: DataPaths;
  keys: ServerKeys;
  config: ServerConfig;
  storage: Storage;
}

export interface OpenDataOptions {
  /** The registry (a postgres:// URL or a SQLite path), e.g. from --registry; wins over the environment and server.json. */
  registry?: string | undefined;
  now?: () => number;
}

/** Where the registry is: options.registry, else env PROVISION_SERVER_REGISTRY, else server.json's `registry`, else DATA/registry.sqlite. */
export function registryLocation(paths: DataPaths, config: ServerConfig, options: OpenDataOptions = {}): RegistryLocation {
  const env = process.env[REGISTRY_ENV];
  const text = options.registry ?? (env !== undefined && env.trim() !== '' ? env : undefined) ?? config.registry;
  if (text === undefined) return { kind: 'sqlite', path: paths.registry };
  const location = parseRegistryLocation(text);
  // A relative SQLite path recorded in server.json is relative to the data directory.
  if (location.kind === 'sqlite' && options.registry === undefined && text === config.registry && !isAbsolute(location.path))
    return { kind: 'sqlite', path: join(paths.dir, location.path) };
  return location;
}

/** Loads keys and config and opens the registry. The caller closes `storage`. */
export async function openDataDir(dir: string, options: OpenDataOptions = {}): Promise<OpenedData> {
  const paths = dataPaths(dir);
  if (!(await exists(paths.dir))) throw new CodedError('E_NO_DATA', `data directory ${paths.dir} does not exist; run: provision-server init --data ${dir}`);
  const config = await readServerConfig(dir);
  const keys = await loadServerKeys(paths.keys);
  const storage = await openStorage(registryLocation(paths, config, options), options.now ? { now: options.now } : {});
  return { paths, keys, config, storage };
}

export async function readHttpToken(path: string): Promise<string> {
  let st;
  try {
    st = await lstat(path);
  } catch {
    throw new CodedError('E_NO_FILE', `HTTP token file ${path} does not exist`);
  }
  if (!st.isFile()) throw new CodedError('E_NO_FILE', `HTTP token file ${path} is not a regular file`);
  if ((st.mode & 0o077) !== 0)
    throw new CodedError('E_KEY_PERMS', `HTTP token file ${path} has mode 0${(st.mode & 0o777).toString(8)}; fix with: chmod 600 ${path}`);
  const token = (await readFile(path, 'utf8')).trim();
  if (token.length < 16) throw new CodedError('E_CONFIG', `HTTP token in ${path} is shorter than 16 characters`);
  return token;
}
