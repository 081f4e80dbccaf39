/**
 * `import-legacy`: registers devices of the seed system from its key tree
 * `user_keys/{user_id}/{device_id}_public.pem` (RSA public keys) as
 * RSA-OAEP-256 devices bound to that user. Such a device has no signing key
 * yet: commands can be sealed to it, and its acks verify once it has enrolled
 * (token) or its signing key was added with `device add --jwks`.
 */
import { createPublicKey } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { CodedError, computeKid, isValidId, parsePublicJwk, type PublicJwk, RSA_KEY_WRAP_ALG } from '../../protocol/index.js';
import type { Storage } from '../storage/types.js';

export interface LegacyImportResult {
  imported: { deviceId: string; userId: string; kid: string; bits: number }[];
  skipped: { path: string; reason: string }[];
}

const PEM_SUFFIX = '_public.pem';

export async function importLegacy(storage: Storage, root: string, options: { dryRun?: boolean } = {}): Promise<LegacyImportResult> {
  const base = (await isDir(join(root, 'user_keys'))) ? join(root, 'user_keys') : root;
  if (!(await isDir(base))) throw new CodedError('E_NO_FILE', `${root} is not a directory`);
  const result: LegacyImportResult = { imported: [], skipped: [] };
  for (const userId of (await readdir(base)).sort()) {
    const userDir = join(base, userId);
    if (!(await isDir(userDir))) {
      result.skipped.push({ path: userDir, reason: 'not a user directory' });
      continue;
    }
    if (userId.length === 0 || userId.length > 128 || userId.startsWith('.')) {
      result.skipped.push({ path: userDir, reason: 'not a valid user id' });
      continue;
    }
    for (const name of (await readdir(userDir)).sort()) {
      const path = join(userDir, name);
      if (!name.endsWith(PEM_SUFFIX)) {
        result.skipped.push({ path, reason: `not a {device_id}${PEM_SUFFIX} file` });
        continue;
      }
      const deviceId = name.slice(0, -PEM_SUFFIX.length);
      if (!isValidId(deviceId)) {
        result.skipped.push({ path, reason: `"${deviceId}" is not a valid device id` });
        continue;
      }
      if (await storage.devices.get(deviceId)) {
        result.skipped.push({ path, reason: `device ${deviceId} is already registered` });
        continue;
      }
      let jwk: PublicJwk;
      try {
        jwk = await rsaJwkFromPem(await readKeyFile(path));
      } catch (err) {
        result.skipped.push({ path, reason: err instanceof Error ? err.message : String(err) });
        continue;
      }
      if (!options.dryRun) await storage.devices.add({ id: deviceId, userId, origin: 'legacy', encryption: jwk, state: 'registered' });
      result.imported.push({ deviceId, userId, kid: jwk.kid, bits: Buffer.from(jwk.n ?? '', 'base64url').length * 8 });
    }
  }
  return result;
}

/** A PEM RSA public key (SPKI or PKCS#1) as our RSA-OAEP-256 encryption JWK; refuses other key types and < 2048 bits. */
export async function rsaJwkFromPem(pem: string): Promise<PublicJwk> {
  let key;
  try {
    key = createPublicKey(pem);
  } catch {
    throw new Error('not a PEM public key');
  }
  if (key.asymmetricKeyType !== 'rsa') throw new Error(`a ${key.asymmetricKeyType ?? 'unknown'} key, not RSA`);
  const raw = key.export({ format: 'jwk' });
  const jwk = { kty: 'RSA', n: raw.n, e: raw.e, use: 'enc', alg: RSA_KEY_WRAP_ALG } as Record<string, unknown>;
  jwk.kid = await computeKid(jwk as never);
  return parsePublicJwk(jwk, 'enc');
}

/** A PEM public key is a few KiB; anything larger is not one. */
const MAX_PEM_BYTES = 64 * 1024;

/**
 * Reads a key file that must be a regular file: a FIFO, device, socket or
 * symbolic link named like a key is refused without blocking on it (opened
 * O_NONBLOCK | O_NOFOLLOW, then checked with fstat before any read).
 */
export async function readKeyFile(path: string): Promise<string> {
  const before = await lstat(path);
  if (!before.isFile()) throw new Error(`not a regular file (${fileKind(before)}): not read`);
  const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new Error(`not a regular file (${fileKind(st)}): not read`);
    if (st.size > MAX_PEM_BYTES) throw new Error(`${st.size} bytes: too large for a PEM public key (at most ${MAX_PEM_BYTES})`);
    const buf = Buffer.alloc(MAX_PEM_BYTES + 1);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    if (bytesRead > MAX_PEM_BYTES) throw new Error(`too large for a PEM public key (more than ${MAX_PEM_BYTES} bytes)`);
    return buf.subarray(0, bytesRead).toString('utf8');
  } finally {
    await fh.close();
  }
}

function fileKind(st: {
  isFIFO(): boolean;
  isSymbolicLink(): boolean;
  isDirectory(): boolean;
  isSocket(): boolean;
  isCharacterDevice(): boolean;
  isBlockDevice(): boolean;
}): string {
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSymbolicLink()) return 'a symbolic link';
  if (st.isDirectory()) return 'a directory';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
  return 'not a regular file';
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await lstat(path)).isDirectory();
  } catch {
    return false;
  }
}
