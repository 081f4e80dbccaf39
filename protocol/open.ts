/**
 * Opening: every structural and algorithm check before any crypto, then
 * decrypt with an allow-list, then verify against pinned keys only.
 */
import jose from 'node-jose';
import { ProtocolError } from './errors.js';
import { parseJsonObjectPayload } from './payload.js';
import { parseJweHeader, parseJwsHeader, toCompactText, type Header } from './compact.js';
import type { KeyRing } from './keyring.js';
import { CONTENT_ENC, EC_KEY_WRAP_ALG, RSA_KEY_WRAP_ALG, SIGNING_ALG } from './keys.js';
import { isRecord } from './guards.js';
import { assertJosePatched } from './jose-patch.js';
import { DEFAULT_MAX_MESSAGE_BYTES } from './limits.js';

const KEY_WRAP_ALLOW = new Set<string>([EC_KEY_WRAP_ALG, RSA_KEY_WRAP_ALG]);
/** Header members that name or carry keys: never trusted, so never accepted. */
const KEY_BEARING = ['jwk', 'jku', 'x5u', 'x5c', 'x5t', 'x5t#S256'] as const;

export interface Decrypted {
  jweHeader: Header;
  /** kid of our key that decrypted it. */
  decryptKid: string;
  /** The inner compact JWS (not yet verified). */
  jws: string;
  jwsHeader: Header;
}

export interface Verified {
  payload: Record<string, unknown>;
  signerKid: string;
}

/** Checks size, shape, header and algorithms, then decrypts with a key from `decryption`. */
export async function decryptSealed(input: string | Uint8Array, decryption: KeyRing, maxBytes = DEFAULT_MAX_MESSAGE_BYTES): Promise<Decrypted> {
  await assertJosePatched();
  const token = toCompactText(input, maxBytes);
  const header = parseJweHeader(token);
  checkJweHeader(header);
  const kid = header.kid;
  if (!decryption.has(kid)) {
    throw new ProtocolError('E_KID', typeof kid === 'string' ? `JWE kid ${kid} is not one of our keys` : 'JWE header has no kid');
  }
  checkEphemeralKey(header);
  const ours = decryption.get(kid);
  if (ours?.alg !== header.alg) throw new ProtocolError('E_ALG', `JWE alg ${String(header.alg)} does not match key ${kid} (${ours?.alg})`);
  let plaintext: Buffer;
  try {
    const result = await jose.JWE.createDecrypt(decryption.joseKey(kid), { algorithms: [String(header.alg), CONTENT_ENC] }).decrypt(token);
    plaintext = result.payload;
  } catch (cause) {
    throw new ProtocolError('E_DECRYPT', 'JWE did not decrypt with our key (tampered, or sealed to another key)', { cause });
  }
  const jws = plaintext.toString('latin1');
  const jwsHeader = parseJwsHeader(jws);
  return { jweHeader: header, decryptKid: kid, jws, jwsHeader };
}

/** Verifies a compact JWS against the pinned keys in `verification` (never a key named by the message). */
export async function verifyJws(jws: string, jwsHeader: Header, verification: KeyRing): Promise<Verified> {
  await assertJosePatched();
  if (jwsHeader.alg !== SIGNING_ALG) throw new ProtocolError('E_ALG', `JWS alg ${String(jwsHeader.alg)} is not ${SIGNING_ALG}`);
  for (const m of KEY_BEARING) {
    if (m in jwsHeader) throw new ProtocolError('E_SIGNATURE', `JWS header carries "${m}": keys named by a message are never trusted`);
  }
  if ('crit' in jwsHeader || 'b64' in jwsHeader) throw new ProtocolError('E_MALFORMED', 'JWS header extensions (crit, b64) are not supported');
  const kid = jwsHeader.kid;
  if (!verification.has(kid)) {
    throw new ProtocolError('E_SIGNATURE', typeof kid === 'string' ? `JWS signer ${kid} is not a pinned key` : 'JWS header has no kid');
  }
  let payload: Buffer;
  try {
    const result = await jose.JWS.createVerify(verification.joseKey(kid), { algorithms: [SIGNING_ALG], allowEmbeddedKey: false }).verify(jws);
    payload = result.payload;
  } catch (cause) {
    throw new ProtocolError('E_SIGNATURE', `JWS signature does not verify with pinned key ${kid}`, { cause });
  }
  return { payload: parseJsonObjectPayload(payload), signerKid: kid };
}

/** decryptSealed then verifyJws: the authenticated claims of a message (and the inner JWS as signed, for the audit). */
export async function openSealed(
  input: string | Uint8Array,
  keys: { decryption: KeyRing; verification: KeyRing; maxBytes?: number },
): Promise<Verified & { decryptKid: string; jws: string }> {
  const d = await decryptSealed(input, keys.decryption, keys.maxBytes);
  const v = await verifyJws(d.jws, d.jwsHeader, keys.verification);
  return { ...v, decryptKid: d.decryptKid, jws: d.jws };
}

function checkJweHeader(h: Header): void {
  if ('zip' in h) throw new ProtocolError('E_ZIP', `JWE "zip" (${String(h.zip)}) is refused: compressed payloads are never inflated`);
  if (typeof h.alg !== 'string' || !KEY_WRAP_ALLOW.has(h.alg)) throw new ProtocolError('E_ALG', `JWE alg ${JSON.stringify(h.alg)} is not allowed`);
  if (h.enc !== CONTENT_ENC) throw new ProtocolError('E_ALG', `JWE enc ${JSON.stringify(h.enc)} is not allowed`);
  if ('crit' in h) throw new ProtocolError('E_MALFORMED', 'JWE "crit" extensions are not supported');
  for (const m of KEY_BEARING) if (m in h) throw new ProtocolError('E_MALFORMED', `JWE header carries "${m}"`);
  if (h.cty !== 'JWT') throw new ProtocolError('E_MALFORMED', 'JWE cty must be "JWT" (a nested signed token)');
}

function checkEphemeralKey(h: Header): void {
  if (h.alg === EC_KEY_WRAP_ALG) {
    const epk = h.epk;
    if (!isRecord(epk) || epk.kty !== 'EC' || epk.crv !== 'P-256' || typeof epk.x !== 'string' || typeof epk.y !== 'string' || 'd' in epk) {
      throw new ProtocolError('E_MALFORMED', 'JWE epk must be a public EC P-256 key');
    }
  } else if ('epk' in h) {
    throw new ProtocolError('E_MALFORMED', 'JWE epk is only valid with ECDH-ES');
  }
}
