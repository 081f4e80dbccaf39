/**
 * JWK key material: generation, validation, thumbprint key ids (RFC 7638) and
 * public projections. Keys are plain JSON objects so they serialise as they are.
 */
import { createECDH, createPrivateKey, createPublicKey, generateKeyPair, type JsonWebKey } from 'node:crypto';
import { promisify } from 'node:util';
import jose from 'node-jose';
import { ProtocolError } from './errors.js';
import { isRecord } from './guards.js';

const generateKeyPairAsync = promisify(generateKeyPair);

export type KeyUse = 'sig' | 'enc';
export const SIGNING_ALG = 'ES256' as const;
export const EC_KEY_WRAP_ALG = 'ECDH-ES+A256KW' as const;
export const RSA_KEY_WRAP_ALG = 'RSA-OAEP-256' as const;
export const CONTENT_ENC = 'A256GCM' as const;
export type KeyWrapAlg = typeof EC_KEY_WRAP_ALG | typeof RSA_KEY_WRAP_ALG;
export type KeyAlg = typeof SIGNING_ALG | KeyWrapAlg;

export const RSA_MIN_BITS = 2048;
export const RSA_DEFAULT_BITS = 3072;

export interface PublicJwk {
  kty: 'EC' | 'RSA';
  kid: string;
  use: KeyUse;
  alg: KeyAlg;
  crv?: 'P-256';
  x?: string;
  y?: string;
  n?: string;
  e?: string;
}

export interface PrivateJwk extends PublicJwk {
  d: string;
  p?: string;
  q?: string;
  dp?: string;
  dq?: string;
  qi?: string;
}

export interface JwkSet {
  keys: PublicJwk[];
}

const EC_PUBLIC = ['crv', 'x', 'y'] as const;
const RSA_PUBLIC = ['n', 'e'] as const;
const RSA_PRIVATE = ['d', 'p', 'q', 'dp', 'dq', 'qi'] as const;
const B64URL = /^[A-Za-z0-9_-]+$/;

/** RFC 7638 SHA-256 thumbprint, base64url: the `kid` of every key here. */
export async function computeKid(jwk: PublicJwk | JsonWebKey): Promise<string> {
  const key = await jose.JWK.asKey(publicMembers(jwk), 'json');
  const digest: unknown = await key.thumbprint('SHA-256');
  if (Buffer.isBuffer(digest)) return digest.toString('base64url');
  return String(digest);
}

/**
 * A fresh P-256 key pair as a JWK (`d`, `x`, `y`), made with `createECDH`.
 *
 * Not `generateKeyPair[Sync]` + `export({ format: 'jwk' })`: Node.js 20 can
 * deadlock there. The export holds the key's mutex while it allocates; a GC
 * in that window may run the weak callback that destroys the finished
 * KeyGenJob, whose destructor takes the same mutex (seen here in a loop of
 * 10,000 generations: the process hangs in futex_wait inside ~KeyGenJob).
 */
export function newP256Jwk(): { kty: 'EC'; crv: 'P-256'; x: string; y: string; d: string } {
  const ecdh = createECDH('prime256v1');
  const pub = ecdh.generateKeys();
  const d = ecdh.getPrivateKey();
  const d32 = d.length === 32 ? d : Buffer.concat([Buffer.alloc(32 - d.length), d]);
  return { kty: 'EC', crv: 'P-256', x: pub.subarray(1, 33).toString('base64url'), y: pub.subarray(33, 65).toString('base64url'), d: d32.toString('base64url') };
}

/** A fresh P-256 ES256 signing key pair. */
export async function generateSigningKey(): Promise<PrivateJwk> {
  return finish(newP256Jwk(), 'sig', SIGNING_ALG);
}

export interface EncryptionKeyOptions {
  /** `ec` (P-256, ECDH-ES+A256KW, the default) or `rsa` (RSA-OAEP-256, for seed-migrated devices). */
  type?: 'ec' | 'rsa';
  /** RSA modulus length in bits; at least 2048, default 3072. */
  modulusLength?: number;
}

/** A fresh encryption key pair: P-256 for ECDH-ES+A256KW, or RSA for RSA-OAEP-256. */
export async function generateEncryptionKey(options: EncryptionKeyOptions = {}): Promise<PrivateJwk> {
  if ((options.type ?? 'ec') === 'rsa') {
    const bits = options.modulusLength ?? RSA_DEFAULT_BITS;
    if (!Number.isSafeInteger(bits) || bits < RSA_MIN_BITS || bits % 8 !== 0) {
      throw new ProtocolError('E_KEY', `RSA modulus must be a multiple of 8 and at least ${RSA_MIN_BITS} bits (got ${bits})`);
    }
    // Encoded inside the job, then re-imported: the exported KeyObject is not the job's (see newP256Jwk).
    const { privateKey } = await generateKeyPairAsync('rsa', {
      modulusLength: bits,
      publicExponent: 0x10001,
      publicKeyEncoding: { type: 'spki', format: 'pem' },
      privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    });
    return finish(createPrivateKey(privateKey).export({ format: 'jwk' }), 'enc', RSA_KEY_WRAP_ALG);
  }
  return finish(newP256Jwk(), 'enc', EC_KEY_WRAP_ALG);
}

/** The public half of a key, carrying `kid`, `use` and `alg`. */
export function toPublicJwk(jwk: PublicJwk): PublicJwk {
  return publicJwkOf(jwk, jwk.kty, jwk.kid, jwk.use, jwk.alg);
}

/** The public JWK set of some keys, as devices pin it and as `keygen` prints it. */
export function toJwkSet(keys: readonly PublicJwk[]): JwkSet {
  return { keys: keys.map(toPublicJwk) };
}

/**
 * Validates an untrusted value as a public JWK of ours: type, curve, `use`,
 * `alg` consistent with the key type, RSA size, and `kid` equal to its thumbprint.
 */
export async function parsePublicJwk(value: unknown, use?: KeyUse): Promise<PublicJwk> {
  const jwk = checkShape(value, use, false);
  await checkKid(jwk);
  try {
    createPublicKey({ key: publicMembers(jwk) as JsonWebKey, format: 'jwk' });
  } catch (cause) {
    throw new ProtocolError('E_KEY', `key ${jwk.kid} is not a valid ${jwk.kty} public key`, { cause });
  }
  return toPublicJwk(jwk);
}

/** Validates an untrusted value as a private JWK of ours whose private part matches its public part. */
export async function parsePrivateJwk(value: unknown, use?: KeyUse): Promise<PrivateJwk> {
  if (!isRecord(value)) throw new ProtocolError('E_KEY', 'a JWK must be a JSON object');
  const jwk = privateJwkOf(checkShape(value, use, true), value);
  await checkKid(jwk);
  let derived: JsonWebKey;
  try {
    const priv = createPrivateKey({ key: privateMembers(jwk) as JsonWebKey, format: 'jwk' });
    derived = createPublicKey(priv).export({ format: 'jwk' });
  } catch (cause) {
    throw new ProtocolError('E_KEY', `key ${jwk.kid} is not a valid ${jwk.kty} private key`, { cause });
  }
  const members = jwk.kty === 'EC' ? (['x', 'y'] as const) : (['n', 'e'] as const);
  for (const m of members) {
    if (derived[m] !== jwk[m]) throw new ProtocolError('E_KEY', `key ${jwk.kid}: private part does not match public part`);
  }
  return privateJwkOf(toPublicJwk(jwk), jwk);
}

/** Validates an untrusted JWK set (`{"keys":[...]}`); every key must pass `parsePublicJwk`. */
export async function parseJwkSet(value: unknown, use?: KeyUse): Promise<PublicJwk[]> {
  if (!isRecord(value) || !Array.isArray(value.keys)) {
    throw new ProtocolError('E_KEY', 'a JWK set must be an object with a "keys" array');
  }
  if (value.keys.length === 0 || value.keys.length > 32) {
    throw new ProtocolError('E_KEY', `a JWK set must hold 1 to 32 keys (got ${value.keys.length})`);
  }
  const out: PublicJwk[] = [];
  for (const k of value.keys as unknown[]) {
    if (use !== undefined && isRecord(k) && k.use !== use) continue;
    out.push(await parsePublicJwk(k, use));
  }
  const kids = new Set(out.map((k) => k.kid));
  if (kids.size !== out.length) throw new ProtocolError('E_KEY', 'a JWK set holds the same key twice');
  return out;
}

/** The key-wrap algorithm a recipient key calls for. */
export function keyWrapAlgFor(jwk: PublicJwk): KeyWrapAlg {
  return jwk.kty === 'RSA' ? RSA_KEY_WRAP_ALG : EC_KEY_WRAP_ALG;
}

async function finish(raw: JsonWebKey, use: KeyUse, alg: KeyAlg): Promise<PrivateJwk> {
  const kid = await computeKid(raw);
  const base = publicMembers(raw) as Omit<PublicJwk, 'kid' | 'use' | 'alg'>;
  return { ...base, kid, use, alg, ...privateOnly(raw) } as PrivateJwk;
}

/** A string member of a JWK-shaped object, or undefined. */
function member(src: object, name: string): string | undefined {
  const v: unknown = Object.getOwnPropertyDescriptor(src, name)?.value;
  return typeof v === 'string' ? v : undefined;
}

/** The public JWK of `src`'s key members, in JWK order (kty, the key's members, kid, use, alg), without any other member. */
function publicJwkOf(src: object, kty: PublicJwk['kty'], kid: string, use: KeyUse, alg: KeyAlg): PublicJwk {
  const jwk: PublicJwk =
    kty === 'RSA'
      ? { kty, n: member(src, 'n'), e: member(src, 'e'), kid, use, alg }
      : { kty, crv: member(src, 'crv') === 'P-256' ? 'P-256' : undefined, x: member(src, 'x'), y: member(src, 'y'), kid, use, alg };
  for (const n of [...EC_PUBLIC, ...RSA_PUBLIC]) if (jwk[n] === undefined) delete jwk[n];
  return jwk;
}

/** `pub` with the private members of `src` (d, and for RSA p, q, dp, dq, qi); refuses a key without `d`. */
function privateJwkOf(pub: PublicJwk, src: object): PrivateJwk {
  const d = member(src, 'd');
  if (d === undefined) throw new ProtocolError('E_KEY', `key ${pub.kid}: private member "d" missing`);
  const jwk: PrivateJwk = { ...pub, d };
  if (pub.kty === 'RSA') {
    for (const n of RSA_PRIVATE) {
      const v = member(src, n);
      if (v !== undefined) jwk[n] = v;
    }
  }
  return jwk;
}

function publicMembers(jwk: PublicJwk | JsonWebKey): Record<string, string> {
  const src = jwk as Record<string, unknown>;
  const out: Record<string, string> = { kty: String(src.kty) };
  const names = src.kty === 'RSA' ? RSA_PUBLIC : EC_PUBLIC;
  for (const n of names) if (typeof src[n] === 'string') out[n] = src[n];
  for (const n of ['kid', 'use', 'alg'] as const) if (typeof src[n] === 'string') out[n] = src[n];
  return out;
}

function privateOnly(jwk: PrivateJwk | JsonWebKey): Record<string, string> {
  const src = jwk as Record<string, unknown>;
  const out: Record<string, string> = {};
  const names = src.kty === 'RSA' ? RSA_PRIVATE : (['d'] as const);
  for (const n of names) if (typeof src[n] === 'string') out[n] = src[n];
  return out;
}

function privateMembers(jwk: PrivateJwk): Record<string, string> {
  return { ...publicMembers(jwk), ...privateOnly(jwk) };
}

function checkShape(value: unknown, use: KeyUse | undefined, wantPrivate: boolean): PublicJwk {
  if (!isRecord(value)) throw new ProtocolError('E_KEY', 'a JWK must be a JSON object');
  const { kty, kid, alg } = value;
  const keyUse = value.use;
  const label = typeof kid === 'string' ? `key ${kid}` : 'key';
  if (typeof kid !== 'string' || !B64URL.test(kid)) throw new ProtocolError('E_KEY', `${label}: "kid" must be a base64url thumbprint`);
  if (keyUse !== 'sig' && keyUse !== 'enc') throw new ProtocolError('E_KEY', `${label}: "use" must be "sig" or "enc"`);
  if (use !== undefined && keyUse !== use) throw new ProtocolError('E_KEY', `${label}: expected a "${use}" key, found "${keyUse}"`);
  let keyAlg: KeyAlg;
  if (kty === 'EC') {
    if (value.crv !== 'P-256') throw new ProtocolError('E_KEY', `${label}: only the P-256 curve is accepted`);
    for (const m of ['x', 'y'] as const) {
      if (typeof value[m] !== 'string' || !B64URL.test(value[m] as string)) throw new ProtocolError('E_KEY', `${label}: "${m}" missing`);
    }
    const expected = keyUse === 'sig' ? SIGNING_ALG : EC_KEY_WRAP_ALG;
    if (alg !== expected) throw new ProtocolError('E_KEY', `${label}: an EC "${keyUse}" key must have alg ${expected}`);
    keyAlg = expected;
  } else if (kty === 'RSA') {
    if (keyUse !== 'enc' || alg !== RSA_KEY_WRAP_ALG) {
      throw new ProtocolError('E_KEY', `${label}: RSA keys are accepted only for encryption with ${RSA_KEY_WRAP_ALG}`);
    }
    if (typeof value.n !== 'string' || !B64URL.test(value.n) || value.e !== 'AQAB') {
      throw new ProtocolError('E_KEY', `${label}: RSA key needs "n" and "e" = AQAB`);
    }
    keyAlg = RSA_KEY_WRAP_ALG;
    const bits = Buffer.from(value.n, 'base64url').length * 8;
    if (bits < RSA_MIN_BITS) throw new ProtocolError('E_KEY', `${label}: RSA modulus of ${bits} bits is below ${RSA_MIN_BITS}`);
  } else {
    throw new ProtocolError('E_KEY', `${label}: "kty" must be "EC" or "RSA"`);
  }
  if (wantPrivate) {
    if (typeof value.d !== 'string' || !B64URL.test(value.d)) throw new ProtocolError('E_KEY', `${label}: private member "d" missing`);
    if (kty === 'RSA') {
      for (const m of RSA_PRIVATE) {
        if (typeof value[m] !== 'string') throw new ProtocolError('E_KEY', `${label}: RSA private member "${m}" missing`);
      }
    }
  } else if ('d' in value) {
    throw new ProtocolError('E_KEY', `${label}: a public key must not carry private members`);
  }
  return publicJwkOf(value, kty, kid, keyUse, keyAlg);
}

async function checkKid(jwk: PublicJwk): Promise<void> {
  const expected = await computeKid(jwk);
  if (expected !== jwk.kid) {
    throw new ProtocolError('E_KEY', `key ${jwk.kid}: "kid" is not its RFC 7638 thumbprint (${expected})`);
  }
}
