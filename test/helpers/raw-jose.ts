/**
 * Hand-made JWS and JWE in plain node:crypto, for hostile tests: an attacker
 * does not use our sealing code, so these build tokens with any header,
 * payload or key, including ones our protocol layer would never produce.
 * ECDH-ES+A256KW (Concat KDF, empty apu/apv) + A256GCM only.
 */
import { createCipheriv, createHash, createHmac, createPrivateKey, createPublicKey, diffieHellman, randomBytes, sign, type KeyObject } from 'node:crypto';
import { newP256Jwk, type PrivateJwk, type PublicJwk } from '../../protocol/index.js';

export const b64u = (b: Buffer | string): string => Buffer.from(b).toString('base64url');
export const b64json = (v: unknown): string => b64u(JSON.stringify(v));

const WRAP_IV = Buffer.from('A6A6A6A6A6A6A6A6', 'hex');

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

function concatKdf(z: Buffer, alg: string): Buffer {
  const a = Buffer.from(alg);
  const info = Buffer.concat([u32(a.length), a, u32(0), u32(0), u32(256)]);
  return createHash('sha256')
    .update(Buffer.concat([u32(1), z, info]))
    .digest();
}

export function privateKeyOf(jwk: PrivateJwk): KeyObject {
  return createPrivateKey({ key: { ...jwk }, format: 'jwk' });
}

export function publicKeyOf(jwk: PublicJwk): KeyObject {
  return createPublicKey({ key: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, n: jwk.n, e: jwk.e } as never, format: 'jwk' });
}

export type JwsSigner = { kind: 'es256'; key: KeyObject } | { kind: 'hs256'; secret: Buffer } | { kind: 'none' } | { kind: 'raw'; signature: Buffer };

/**
 * A compact JWS with the given header (object, or raw header JSON text) and
 * payload bytes, signed as `signer` says regardless of what the header claims.
 */
export function rawJws(header: Record<string, unknown> | string, payload: Buffer | string, signer: JwsSigner): string {
  const h = typeof header === 'string' ? b64u(header) : b64json(header);
  const p = b64u(payload);
  const input = Buffer.from(`${h}.${p}`, 'ascii');
  let sig: Buffer;
  switch (signer.kind) {
    case 'es256':
      sig = sign('sha256', input, { key: signer.key, dsaEncoding: 'ieee-p1363' });
      break;
    case 'hs256':
      sig = createHmac('sha256', signer.secret).update(input).digest();
      break;
    case 'none':
      sig = Buffer.alloc(0);
      break;
    case 'raw':
      sig = signer.signature;
      break;
  }
  return `${h}.${p}.${b64u(sig)}`;
}

export interface RawJweOptions {
  /** Members merged over the standard header; a member set to undefined is removed. */
  header?: Record<string, unknown>;
  /** Raw protected header JSON text (replaces the built header entirely; epk is then up to the caller). */
  headerText?: string;
  /** The AES key wrap's initial value (RFC 3394 2.2.3); default A6A6A6A6A6A6A6A6. Any other is a forgery. */
  wrapIv?: Buffer;
}

/**
 * A compact JWE (ECDH-ES+A256KW, A256GCM) of `plaintext` to `recipient`,
 * correctly encrypted for whatever protected header results, so that only the
 * receiver's header and content checks can refuse it.
 */
export function rawJwe(plaintext: Buffer | string, recipient: PublicJwk, options: RawJweOptions = {}): string {
  const epk = newP256Jwk();
  const kek = concatKdf(diffieHellman({ privateKey: createPrivateKey({ key: epk, format: 'jwk' }), publicKey: publicKeyOf(recipient) }), 'ECDH-ES+A256KW');
  const cek = randomBytes(32);
  const wrap = createCipheriv('id-aes256-wrap', kek, options.wrapIv ?? WRAP_IV);
  const encryptedKey = Buffer.concat([wrap.update(cek), wrap.final()]);
  let headerText = options.headerText;
  if (headerText === undefined) {
    const h: Record<string, unknown> = {
      alg: 'ECDH-ES+A256KW',
      enc: 'A256GCM',
      kid: recipient.kid,
      cty: 'JWT',
      epk: { kty: 'EC', crv: 'P-256', x: epk.x, y: epk.y },
    };
    for (const [k, v] of Object.entries(options.header ?? {})) {
      if (v === undefined) delete h[k];
      else h[k] = v;
    }
    headerText = JSON.stringify(h);
  }
  const header = b64u(headerText);
  const iv = randomBytes(12);
  const gcm = createCipheriv('aes-256-gcm', cek, iv);
  gcm.setAAD(Buffer.from(header, 'ascii'));
  const ct = Buffer.concat([gcm.update(Buffer.from(plaintext)), gcm.final()]);
  return `${header}.${b64u(encryptedKey)}.${b64u(iv)}.${b64u(ct)}.${b64u(gcm.getAuthTag())}`;
}

/** A fresh P-256 key pair as an attacker makes it, with its public JWK. */
export function attackerKey(): { key: KeyObject; publicJwk: Record<string, string> } {
  const j = newP256Jwk();
  return { key: createPrivateKey({ key: j, format: 'jwk' }), publicJwk: { kty: 'EC', crv: 'P-256', x: j.x, y: j.y } };
}
