/**
 * Reading a bundle made by `provision-server bundle --out DIR`
 * (docs/CONTRACTS.md) and mapping it onto the board's layout: which file
 * goes where, with which mode and owner, and the config.json the board gets
 * (the bundle's, with its paths pointed at the board's locations).
 */
import type { Stats } from 'node:fs';
import { lstat, readFile, readdir } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { FlashError } from './errors.js';
import { BOARD } from './board-layout.js';
import type { OwnerClass } from './plan.js';

const DEVICE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const KEY_FILES = new Set(['signing.jwk', 'encryption.jwk', 'encryption.previous.jwk']);

export interface BundleFile {
  /** Absolute path on the host. */
  from: string;
  /** Absolute path on the board. */
  to: string;
  mode: number;
  owner: OwnerClass;
  secret: boolean;
}

export interface BoardBundle {
  dir: string;
  deviceId: string;
  /** config.json as the board gets it. */
  config: Record<string, unknown>;
  files: BundleFile[];
  /** Board directories the bundle needs besides the standard ones (hooks). */
  extraDirs: Array<{ path: string; mode: number; owner: OwnerClass }>;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

async function regularFile(path: string, what: string): Promise<Stats> {
  let st;
  try {
    st = await lstat(path);
  } catch {
    throw new FlashError('E_BUNDLE', `${what} ${path} does not exist`);
  }
  if (!st.isFile()) throw new FlashError('E_BUNDLE', `${what} ${path} is not a regular file (symlinks are not followed)`);
  return st;
}

/** A secret in the bundle must already be private on the host (as `provision-server bundle` writes it). */
async function secretFile(path: string, what: string): Promise<void> {
  const st = await regularFile(path, what);
  if ((st.mode & 0o077) !== 0) {
    throw new FlashError(
      'E_BUNDLE',
      `${what} ${path} has mode 0${(st.mode & 0o777).toString(8)}: other users of this machine can read it. Fix: chmod 600 ${path} (and consider it exposed)`,
    );
  }
}

export async function readBundle(bundleDir: string): Promise<BoardBundle> {
  const dir = resolve(bundleDir);
  const configPath = join(dir, 'config.json');
  await regularFile(configPath, 'bundle config');
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(configPath, 'utf8'));
  } catch (err) {
    throw new FlashError('E_BUNDLE', `${configPath} is not valid JSON: ${(err as Error).message}`);
  }
  if (!isObject(parsed)) throw new FlashError('E_BUNDLE', `${configPath} is not a JSON object`);
  const config: Record<string, unknown> = structuredClone(parsed);
  const deviceId = config.device_id;
  if (typeof deviceId !== 'string' || !DEVICE_ID.test(deviceId)) {
    throw new FlashError('E_BUNDLE', `${configPath}: device_id must match ${DEVICE_ID.source}`);
  }
  const inBundle = (v: string): string => (isAbsolute(v) ? v : join(dir, v));
  const str = (obj: Record<string, unknown>, key: string, where: string, required: boolean): string | undefined => {
    const v = obj[key];
    if (v === undefined || v === null) {
      if (required) throw new FlashError('E_BUNDLE', `${configPath}: ${where}${key} is missing`);
      return undefined;
    }
    if (typeof v !== 'string' || v === '') throw new FlashError('E_BUNDLE', `${configPath}: ${where}${key} must be a non-empty string`);
    return v;
  };
  const files: BundleFile[] = [];
  const extraDirs: BoardBundle['extraDirs'] = [];

  // Trust anchors: public, readable by the agent's group only.
  const trust = str(config, 'trust', '', true) ?? '';
  await regularFile(inBundle(trust), 'trust anchors');
  files.push({ from: inBundle(trust), to: BOARD.trust, mode: 0o640, owner: 'root:agent', secret: false });
  config.trust = BOARD.trustRel;

  // Release keys (provision-server bundle writes release.jwks): what upgrades must be signed by.
  // Without them the board refuses upgrades (E_UPGRADE_UNSUPPORTED).
  const releaseKeys =
    str(config, 'release_keys', '', false) ?? ((await lstat(join(dir, BOARD.releaseKeysRel)).catch(() => undefined)) ? BOARD.releaseKeysRel : undefined);
  if (releaseKeys !== undefined) {
    await regularFile(inBundle(releaseKeys), 'release keys');
    files.push({ from: inBundle(releaseKeys), to: BOARD.releaseKeys, mode: 0o640, owner: 'root:agent', secret: false });
    // The agent's default is this path; a bundle naming it explicitly gets the board's.
    if (config.release_keys !== undefined) config.release_keys = BOARD.releaseKeysRel;
  }

  if (!isObject(config.broker)) throw new FlashError('E_BUNDLE', `${configPath}: broker must be an object`);
  const broker = config.broker;
  const ca = str(broker, 'ca', 'broker.', false);
  if (ca !== undefined) {
    await regularFile(inBundle(ca), 'broker CA');
    files.push({ from: inBundle(ca), to: BOARD.ca, mode: 0o640, owner: 'root:agent', secret: false });
    broker.ca = BOARD.caRel;
  }
  const cert = str(broker, 'cert', 'broker.', false);
  const key = str(broker, 'key', 'broker.', false);
  if ((cert === undefined) !== (key === undefined)) throw new FlashError('E_BUNDLE', `${configPath}: broker.cert and broker.key go together`);
  if (cert !== undefined && key !== undefined) {
    await regularFile(inBundle(cert), 'client certificate');
    await secretFile(inBundle(key), 'client key');
    files.push({ from: inBundle(cert), to: BOARD.clientCert, mode: 0o640, owner: 'root:agent', secret: false });
    files.push({ from: inBundle(key), to: BOARD.clientKey, mode: 0o600, owner: 'agent', secret: true });
    broker.cert = BOARD.clientCertRel;
    broker.key = BOARD.clientKeyRel;
  }

  const token = str(config, 'enrollment_token', '', false);
  if (token !== undefined) {
    await secretFile(inBundle(token), 'enrollment token');
    files.push({ from: inBundle(token), to: BOARD.enrollToken, mode: 0o600, owner: 'agent', secret: true });
  }
  config.enrollment_token = BOARD.enrollToken;

  // Keys made on the host (--keys-on-host): the key store's files.
  const keystore = str(config, 'keystore', '', false);
  if (keystore !== undefined) {
    const keysDir = inBundle(keystore);
    let names: string[];
    try {
      const st = await lstat(keysDir);
      if (!st.isDirectory()) throw new FlashError('E_BUNDLE', `key store ${keysDir} is not a directory`);
      names = (await readdir(keysDir)).sort();
    } catch (err) {
      if (err instanceof FlashError) throw err;
      names = []; // no keys in the bundle: the agent generates them on the board
    }
    for (const name of names) {
      if (!KEY_FILES.has(name))
        throw new FlashError('E_BUNDLE', `unexpected file ${join(keysDir, name)} in the bundle's key store (expected ${[...KEY_FILES].join(', ')})`);
      await secretFile(join(keysDir, name), 'device key');
      files.push({ from: join(keysDir, name), to: `${BOARD.keystore}/${name}`, mode: 0o600, owner: 'agent', secret: true });
    }
  }
  config.keystore = BOARD.keystore;
  config.state_dir = BOARD.stateDir;

  // Hook executables shipped in the bundle: root-owned, so the agent cannot change them.
  const hooks = str(config, 'hooks_dir', '', false);
  if (hooks !== undefined && !isAbsolute(hooks)) {
    const hooksDir = inBundle(hooks);
    let names: string[];
    try {
      names = (await readdir(hooksDir)).sort();
    } catch {
      throw new FlashError('E_BUNDLE', `hooks_dir ${hooksDir} does not exist`);
    }
    extraDirs.push({ path: BOARD.hooksDir, mode: 0o755, owner: 'root' });
    for (const name of names) {
      const st = await regularFile(join(hooksDir, name), 'hook');
      files.push({ from: join(hooksDir, name), to: `${BOARD.hooksDir}/${name}`, mode: (st.mode & 0o111) !== 0 ? 0o755 : 0o644, owner: 'root', secret: false });
    }
    config.hooks_dir = BOARD.hooksDir;
  }
  return { dir, deviceId, config, files, extraDirs };
}
