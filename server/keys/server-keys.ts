/**
 * The server's key directory: `signing.jwk`, `encryption.jwk` (0600, in a 0700
 * directory), `trust.jwks` (the public set devices pin) and `server.json` (its id).
 */
import { lstat, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  KeyRing,
  assertValidId,
  generateEncryptionKey,
  generateSigningKey,
  parsePrivateJwk,
  toJwkSet,
  toPublicJwk,
  type JwkSet,
  type PrivateJwk,
} from '../../protocol/index.js';
import { CodedError } from '../../protocol/index.js';
import { writeFileAtomic } from '../../lib/durable-file.js';
import { ensurePrivateDir, exists } from '../../lib/fs.js';

export const DEFAULT_SERVER_ID = 'provision-server';

export interface ServerKeys {
  dir: string;
  serverId: string;
  signing: PrivateJwk;
  encryption: PrivateJwk;
  trust: JwkSet;
  /** The server's decryption ring (for acks and enrollments). */
  decryption: KeyRing;
}

export async function initServerKeys(dir: string, options: { serverId?: string; force?: boolean } = {}): Promise<JwkSet> {
  const serverId = options.serverId ?? DEFAULT_SERVER_ID;
  assertValidId(serverId, 'server id');
  await ensurePrivateDir(dir);
  if (!options.force && (await exists(join(dir, 'signing.jwk')))) {
    throw new CodedError(
      'E_KEYS_EXIST',
      `server keys already exist in ${dir}; pass --force to replace them (every device must then be re-flashed with the new trust.jwks)`,
    );
  }
  const [signing, encryption] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
  const trust = toJwkSet([signing, encryption]);
  await writeFileAtomic(join(dir, 'signing.jwk'), `${JSON.stringify(signing)}\n`, { mode: 0o600 });
  await writeFileAtomic(join(dir, 'encryption.jwk'), `${JSON.stringify(encryption)}\n`, { mode: 0o600 });
  await writeFileAtomic(join(dir, 'server.json'), `${JSON.stringify({ server_id: serverId }, null, 2)}\n`, { mode: 0o644 });
  await writeFileAtomic(join(dir, 'trust.jwks'), `${JSON.stringify(trust, null, 2)}\n`, { mode: 0o644 });
  return trust;
}

export async function loadServerKeys(dir: string): Promise<ServerKeys> {
  const signing = await readPrivate(join(dir, 'signing.jwk'), 'sig');
  const encryption = await readPrivate(join(dir, 'encryption.jwk'), 'enc');
  let serverId = DEFAULT_SERVER_ID;
  try {
    const meta = JSON.parse(await readFile(join(dir, 'server.json'), 'utf8')) as { server_id?: unknown };
    if (typeof meta.server_id === 'string') serverId = meta.server_id;
  } catch {
    /* absent: default id */
  }
  return {
    dir,
    serverId,
    signing,
    encryption,
    trust: toJwkSet([toPublicJwk(signing), toPublicJwk(encryption)]),
    decryption: await KeyRing.create([encryption]),
  };
}

function readPrivate(path: string, use: 'sig' | 'enc'): Promise<PrivateJwk> {
  return readPrivateKeyFile(
    path,
    use,
    'server key',
    () => new CodedError('E_NO_KEYS', `server key ${path} does not exist; run: provision-server keys init --dir ${join(path, '..')}`),
  );
}

/**
 * A private JWK file (`label`: how messages name it): a regular file, not readable by others
 * (E_KEY_PERMS), valid JSON (E_KEY_CORRUPT), a key for `use`; `missing()` is thrown when it is not there.
 */
export async function readPrivateKeyFile(path: string, use: 'sig' | 'enc', label: string, missing: () => CodedError): Promise<PrivateJwk> {
  let st;
  try {
    st = await lstat(path);
  } catch {
    throw missing();
  }
  if (!st.isFile()) throw new CodedError('E_KEY_PERMS', `${label} ${path} is not a regular file`);
  if ((st.mode & 0o077) !== 0) {
    throw new CodedError('E_KEY_PERMS', `${label} ${path} has mode 0${(st.mode & 0o777).toString(8)}, readable by others; fix with: chmod 600 ${path}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, 'utf8')) as unknown;
  } catch {
    throw new CodedError('E_KEY_CORRUPT', `${label} ${path} is not valid JSON`);
  }
  return parsePrivateJwk(json, use);
}
