/**
 * The floor: the same nested ES256 + ECDH-ES+A256KW/A256GCM work done with
 * plain node:crypto and pre-imported KeyObjects, no JOSE library. Used only by
 * the benchmark, to show what node-jose costs on top of the cryptography.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  randomBytes,
  randomUUID,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';
import { newP256Jwk, type PrivateJwk, type PublicJwk } from '../../protocol/index.js';

const b64u = (b: Buffer | string): string => Buffer.from(b).toString('base64url');
const WRAP_IV = Buffer.from('A6A6A6A6A6A6A6A6', 'hex');

function concatKdf(z: Buffer): Buffer {
  const alg = Buffer.from('ECDH-ES+A256KW');
  const info = Buffer.concat([u32(alg.length), alg, u32(0), u32(0), u32(256)]);
  return createHash('sha256')
    .update(Buffer.concat([u32(1), z, info]))
    .digest();
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

export interface FloorKeys {
  signer: KeyObject;
  signerKid: string;
  verifier: KeyObject;
  recipient: KeyObject;
  recipientKid: string;
  decrypter: KeyObject;
}

export function floorKeys(signing: PrivateJwk, encryption: PrivateJwk): FloorKeys {
  const signer = createPrivateKey({ key: { ...signing }, format: 'jwk' });
  const decrypter = createPrivateKey({ key: { ...encryption }, format: 'jwk' });
  return {
    signer,
    signerKid: signing.kid,
    verifier: createPublicKey(signer),
    recipient: createPublicKey(decrypter),
    recipientKid: encryption.kid,
    decrypter,
  };
}

export function floorSeal(claims: Record<string, unknown>, k: FloorKeys): string {
  const jwsHeader = b64u(JSON.stringify({ alg: 'ES256', kid: k.signerKid, typ: 'JWT' }));
  const jwsPayload = b64u(JSON.stringify(claims));
  const sig = sign('sha256', Buffer.from(`${jwsHeader}.${jwsPayload}`), { key: k.signer, dsaEncoding: 'ieee-p1363' });
  const jws = `${jwsHeader}.${jwsPayload}.${b64u(sig)}`;
  const epk = newP256Jwk();
  const kek = concatKdf(diffieHellman({ privateKey: createPrivateKey({ key: epk, format: 'jwk' }), publicKey: k.recipient }));
  const cek = randomBytes(32);
  const wrap = createCipheriv('id-aes256-wrap', kek, WRAP_IV);
  const encryptedKey = Buffer.concat([wrap.update(cek), wrap.final()]);
  const header = b64u(
    JSON.stringify({ alg: 'ECDH-ES+A256KW', kid: k.recipientKid, cty: 'JWT', enc: 'A256GCM', epk: { kty: 'EC', crv: 'P-256', x: epk.x, y: epk.y } }),
  );
  const iv = randomBytes(12);
  const gcm = createCipheriv('aes-256-gcm', cek, iv);
  gcm.setAAD(Buffer.from(header, 'ascii'));
  const ct = Buffer.concat([gcm.update(jws, 'ascii'), gcm.final()]);
  return `${header}.${b64u(encryptedKey)}.${b64u(iv)}.${b64u(ct)}.${b64u(gcm.getAuthTag())}`;
}

export function floorOpen(token: string, k: FloorKeys): Record<string, unknown> {
  const [header = '', ek = '', iv = '', ct = '', tag = ''] = token.split('.');
  const h = JSON.parse(Buffer.from(header, 'base64url').toString()) as { epk: Record<string, string> };
  const epk = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: h.epk.x, y: h.epk.y }, format: 'jwk' });
  const kek = concatKdf(diffieHellman({ privateKey: k.decrypter, publicKey: epk }));
  const unwrap = createDecipheriv('id-aes256-wrap', kek, WRAP_IV);
  const cek = Buffer.concat([unwrap.update(Buffer.from(ek, 'base64url')), unwrap.final()]);
  const gcm = createDecipheriv('aes-256-gcm', cek, Buffer.from(iv, 'base64url'));
  gcm.setAAD(Buffer.from(header, 'ascii'));
  gcm.setAuthTag(Buffer.from(tag, 'base64url'));
  const jws = Buffer.concat([gcm.update(Buffer.from(ct, 'base64url')), gcm.final()]).toString('ascii');
  const [jh = '', jp = '', js = ''] = jws.split('.');
  if (!verify('sha256', Buffer.from(`${jh}.${jp}`), { key: k.verifier, dsaEncoding: 'ieee-p1363' }, Buffer.from(js, 'base64url'))) {
    throw new Error('floor: bad signature');
  }
  return JSON.parse(Buffer.from(jp, 'base64url').toString()) as Record<string, unknown>;
}

export function floorClaims(deviceId: string, seq: number): Record<string, unknown> {
  const iat = Math.floor(Date.now() / 1000);
  return {
    iss: 'srv',
    aud: deviceId,
    iat,
    exp: iat + 300,
    jti: randomUUID(),
    seq,
    device_id: deviceId,
    action: 'update',
    user_id: 'u1',
    params: { sensor: { enabled: true } },
  };
}

export type { PublicJwk };
