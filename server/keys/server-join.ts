/**
 * Several server machines, one fleet: every `serve` signs and opens with the
 * same server keys (boards pin one trust.jwks) and shares one PostgreSQL
 * registry. `keys export` writes what another machine needs into one file
 * (0600: it holds the private keys): the server id and key pair, the public
 * release keys boards pin, the HTTP API token, the topic prefix, the boards'
 * broker settings and the registry URL. `init --join FILE` makes a data
 * directory of it. The release signing key is never exported: releases are
 * signed where it lives (offline), then `release add` runs on any machine.
 * Broker client certificates are per machine: give --broker/--ca/--cert/--key
 * to `init --join` (default: the exporting machine's URL and no files).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CodedError, isRecord, parsePrivateJwk, toJwkSet, type PrivateJwk } from '../../protocol/index.js';
import { writeFileAtomic } from '../../lib/durable-file.js';
import { ensurePrivateDir, exists } from '../../lib/fs.js';
import { readPrivateKeyFile } from './server-keys.js';
import { serverConfigMode } from '../data-dir.js';
import { openStorage, parseRegistryLocation, redactUrl } from '../storage/open.js';

export const JOIN_FORMAT = 'provision-server-join/1';

export interface JoinFile {
  format: typeof JOIN_FORMAT;
  server_id: string;
  signing: PrivateJwk;
  encryption: PrivateJwk;
  /** DATA/release.jwks (public), when the exporting machine has one. */
  release_jwks?: unknown;
  http_token?: string;
  /** server.json as recorded, less the broker's local file paths. */
  config: Record<string, unknown>;
}

const missing = (what: string) => () => new CodedError('E_NO_KEYS', `${what} does not exist: run keys export on a machine whose data directory is initialised`);

/** What another machine needs to serve this fleet (the caller writes it 0600). */
export async function exportServer(dataDir: string): Promise<JoinFile> {
  const keys = join(dataDir, 'keys');
  const signing = await readPrivateKeyFile(join(keys, 'signing.jwk'), 'sig', 'server signing key', missing(join(keys, 'signing.jwk')));
  const encryption = await readPrivateKeyFile(join(keys, 'encryption.jwk'), 'enc', 'server encryption key', missing(join(keys, 'encryption.jwk')));
  const meta = JSON.parse(await readFile(join(keys, 'server.json'), 'utf8')) as { server_id?: unknown };
  if (typeof meta.server_id !== 'string') throw new CodedError('E_CONFIG', `${join(keys, 'server.json')}: "server_id" missing`);
  const config = JSON.parse(await readFile(join(dataDir, 'server.json'), 'utf8')) as unknown;
  if (!isRecord(config)) throw new CodedError('E_CONFIG', `${join(dataDir, 'server.json')} is not a JSON object`);
  const out: JoinFile = { format: JOIN_FORMAT, server_id: meta.server_id, signing, encryption, config: portableConfig(config) };
  const releaseJwks = join(dataDir, 'release.jwks');
  if (await exists(releaseJwks)) out.release_jwks = JSON.parse(await readFile(releaseJwks, 'utf8')) as unknown;
  const token = join(dataDir, 'http.token');
  if (await exists(token)) out.http_token = (await readFile(token, 'utf8')).trim();
  return out;
}

/** server.json without the exporting machine's file paths (broker CA, client certificate and key). */
function portableConfig(config: Record<string, unknown>): Record<string, unknown> {
  const out = { ...config };
  if (isRecord(config.broker)) out.broker = { url: config.broker.url };
  return out;
}

/** Parses and checks a join file (E_JOIN names what is wrong). */
export async function readJoinFile(path: string): Promise<JoinFile> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(path, 'utf8')) as unknown;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new CodedError('E_NO_FILE', `join file ${path} does not exist`);
    throw new CodedError('E_JOIN', `join file ${path} is not JSON`);
  }
  const bad = (why: string): CodedError =>
    new CodedError('E_JOIN', `join file ${path}: ${why}; make it with: provision-server keys export --data DIR --out FILE`);
  if (!isRecord(raw) || raw.format !== JOIN_FORMAT) throw bad(`format is not ${JOIN_FORMAT}`);
  if (typeof raw.server_id !== 'string' || raw.server_id === '') throw bad('no server_id');
  if (!isRecord(raw.config)) throw bad('no config');
  const parse = (v: unknown, use: 'sig' | 'enc'): Promise<PrivateJwk> =>
    parsePrivateJwk(v, use).catch((err: unknown) => {
      throw bad(`its ${use === 'sig' ? 'signing' : 'encryption'} key does not parse (${err instanceof Error ? err.message : String(err)})`);
    });
  const signing = await parse(raw.signing, 'sig');
  const encryption = await parse(raw.encryption, 'enc');
  return {
    format: JOIN_FORMAT,
    server_id: raw.server_id,
    signing,
    encryption,
    config: raw.config,
    ...(raw.release_jwks !== undefined ? { release_jwks: raw.release_jwks } : {}),
    ...(typeof raw.http_token === 'string' ? { http_token: raw.http_token } : {}),
  };
}

/**
 * Writes a data directory from a join file: DATA/keys (0700; private keys 0600),
 * trust.jwks, server.json with `overrides` applied, http.token (0600),
 * release.jwks. Refuses a directory that already has server keys.
 */
export async function writeJoinedDataDir(dataDir: string, file: JoinFile, overrides: Record<string, unknown>): Promise<void> {
  const keys = join(dataDir, 'keys');
  if (await exists(join(keys, 'signing.jwk'))) {
    throw new CodedError('E_EXISTS', `${dataDir} already has server keys: join into a new data directory`);
  }
  await ensurePrivateDir(dataDir);
  await ensurePrivateDir(keys);
  await writeFileAtomic(join(keys, 'signing.jwk'), `${JSON.stringify(file.signing)}\n`, { mode: 0o600 });
  await writeFileAtomic(join(keys, 'encryption.jwk'), `${JSON.stringify(file.encryption)}\n`, { mode: 0o600 });
  await writeFileAtomic(join(keys, 'server.json'), `${JSON.stringify({ server_id: file.server_id }, null, 2)}\n`, { mode: 0o644 });
  const trust = toJwkSet([file.signing, file.encryption]);
  await writeFileAtomic(join(keys, 'trust.jwks'), `${JSON.stringify(trust, null, 2)}\n`, { mode: 0o644 });
  const config = { ...file.config, ...overrides };
  await writeFileAtomic(join(dataDir, 'server.json'), `${JSON.stringify(config, null, 2)}\n`, { mode: serverConfigMode(config) });
  if (file.http_token !== undefined) await writeFileAtomic(join(dataDir, 'http.token'), `${file.http_token}\n`, { mode: 0o600 });
  if (file.release_jwks !== undefined) await writeFileAtomic(join(dataDir, 'release.jwks'), `${JSON.stringify(file.release_jwks, null, 2)}\n`, { mode: 0o644 });
}

/**
 * `init --join FILE`: a data directory for another machine serving the same
 * fleet. The registry (`registry`: the join file's, else `overrides.registry`)
 * must be reachable first (a PostgreSQL one is what several machines share);
 * nothing is written when it is not. Returns where the registry is (shown
 * without a password).
 */
export async function joinDataDir(
  dataDir: string,
  path: string,
  overrides: { registry?: string; broker?: Record<string, unknown> },
): Promise<{ registry: string }> {
  const file = await readJoinFile(path);
  const text = overrides.registry ?? (typeof file.config.registry === 'string' ? file.config.registry : undefined);
  if (text === undefined) {
    throw new CodedError('E_USAGE', `join file ${path} names no registry (its server uses DATA/registry.sqlite): give --registry postgres://USER@HOST/DB`);
  }
  const location = parseRegistryLocation(text);
  if (location.kind !== 'postgres') {
    throw new CodedError(
      'E_USAGE',
      `the registry ${text} is a SQLite file: machines share a fleet through PostgreSQL (provision-server registry migrate --to postgres://...)`,
    );
  }
  await (await openStorage(location)).close();
  await writeJoinedDataDir(dataDir, file, { registry: location.url, ...(overrides.broker ? { broker: overrides.broker } : {}) });
  return { registry: redactUrl(location.url) };
}
