/** Sealing: claims -> compact JWS (ES256) -> compact JWE to the recipient's key. */
import jose from 'node-jose';
import { ProtocolError } from './errors.js';
import { asJoseKey } from './keyring.js';
import { assertJosePatched } from './jose-patch.js';
import { CONTENT_ENC, SIGNING_ALG, keyWrapAlgFor, newP256Jwk, type PrivateJwk, type PublicJwk } from './keys.js';
import { DEFAULT_MAX_MESSAGE_BYTES } from './limits.js';

export interface SealKeys {
  /** Private ES256 key of the sender. */
  signer: PrivateJwk;
  /** Public encryption key of the recipient (EC P-256 or RSA). */
  recipient: PublicJwk;
}

/** Signs `claims` and encrypts the JWS to the recipient: `JWE{cty:"JWT"}(JWS(claims))`. */
export async function sealClaims(claims: Record<string, unknown>, keys: SealKeys): Promise<string> {
  await assertJosePatched();
  if (keys.signer.use !== 'sig' || keys.signer.alg !== SIGNING_ALG || typeof keys.signer.d !== 'string') {
    throw new ProtocolError('E_KEY', 'the signer must be a private ES256 signing key');
  }
  if (keys.recipient.use !== 'enc') throw new ProtocolError('E_KEY', 'the recipient must be an encryption key');
  const signKey = await asJoseKey(keys.signer);
  const jws = await jose.JWS.createSign({ format: 'compact', fields: { alg: SIGNING_ALG, kid: keys.signer.kid, typ: 'JWT' } }, signKey)
    .update(JSON.stringify(claims), 'utf8')
    .final();
  const encKey = await asJoseKey(keys.recipient);
  // A fresh ephemeral key per message for ECDH-ES, made by node:crypto (node-jose's own
  // EC key generation is pure JavaScript and costs ~15 ms); node-jose does the JOSE work.
  const recipient = keys.recipient.kty === 'EC' ? { key: encKey, epk: newP256Jwk() } : encKey;
  const jwe: unknown = await jose.JWE.createEncrypt(
    {
      format: 'compact',
      contentAlg: CONTENT_ENC,
      fields: { alg: keyWrapAlgFor(keys.recipient), kid: keys.recipient.kid, cty: 'JWT' },
    },
    recipient as jose.JWK.Key,
  )
    .update(Buffer.from(String(jws), 'ascii'))
    .final();
  if (typeof jwe !== 'string') throw new Error('node-jose did not return a compact JWE');
  if (jwe.length > DEFAULT_MAX_MESSAGE_BYTES) {
    throw new ProtocolError('E_TOO_LARGE', `sealed message of ${jwe.length} bytes exceeds the cap of ${DEFAULT_MAX_MESSAGE_BYTES}`);
  }
  return jwe;
}
