/**
 * Signed checkpoints of the audit chain (issue 25), no I/O: the server signs
 * the chain's head with its signing key (ES256) as a compact JWS
 *
 *   header  {"alg":"ES256","kid":KID,"typ":"provision-audit-checkpoint+jwt"}
 *   payload {"typ":"audit-checkpoint","iss":SERVER_ID,"last_id":N,"hash":HEX64,"at":MS}
 *
 * `last_id` is the id of the last entry covered and `hash` its chain hash:
 * whoever holds a checkpoint (kept elsewhere) can show that the chain up to
 * that entry is the one the server had, and that nothing after a verified
 * export's head was cut off before it. Verification goes through
 * protocol/open.ts verifyJws (ES256 only, pinned keys, no key from the message).
 */
import jose from 'node-jose';
import { asJoseKey, CodedError, isRecord, SIGNING_ALG, verifyJws, type KeyRing, type PrivateJwk, type PublicJwk } from '../../protocol/index.js';
import { parseJwsHeader } from '../../protocol/compact.js';

export const CHECKPOINT_TYP = 'audit-checkpoint';
const HEADER_TYP = 'provision-audit-checkpoint+jwt';
const HEX64 = /^[0-9a-f]{64}$/;

/** What a checkpoint says. */
export interface CheckpointClaims {
  iss: string;
  lastId: number;
  hash: string;
  at: number;
}

/** A checkpoint as the registry keeps it: its claims (the columns) and the signed proof. */
export interface CheckpointRecord {
  id: number;
  at: number;
  lastId: number;
  hash: string;
  jws: string;
}

/** Signs the head `{lastId, hash}` at `at` with the server's private signing key. */
export async function signCheckpoint(claims: CheckpointClaims, signing: PrivateJwk): Promise<string> {
  if (signing.use !== 'sig' || signing.alg !== SIGNING_ALG) throw new CodedError('E_KEY', 'an audit checkpoint is signed with an ES256 signing key');
  const payload = { typ: CHECKPOINT_TYP, iss: claims.iss, last_id: claims.lastId, hash: claims.hash, at: claims.at };
  const key = await asJoseKey(signing);
  const jws: unknown = await jose.JWS.createSign({ format: 'compact', fields: { alg: SIGNING_ALG, kid: signing.kid, typ: HEADER_TYP } }, key)
    .update(JSON.stringify(payload), 'utf8')
    .final();
  return String(jws);
}

/** A checkpoint whose signature or claims do not verify (E_AUDIT_CHECKPOINT). */
export class CheckpointError extends CodedError<'E_AUDIT_CHECKPOINT'> {
  constructor(message: string, options?: { cause?: unknown }) {
    super('E_AUDIT_CHECKPOINT', message, options);
  }
}

/**
 * Verifies a checkpoint's JWS against `keys` (the server's public signing
 * keys) and returns its claims; E_AUDIT_CHECKPOINT when the signature, the
 * header or the payload is not that of a checkpoint.
 */
export async function verifyCheckpoint(jws: string, keys: KeyRing): Promise<CheckpointClaims & { kid: string }> {
  let payload: Record<string, unknown>;
  let kid: string;
  try {
    const header = parseJwsHeader(jws);
    if (header.typ !== HEADER_TYP) throw new CheckpointError(`the JWS is not an audit checkpoint (typ ${JSON.stringify(header.typ)})`);
    const v = await verifyJws(jws, header, keys);
    payload = v.payload;
    kid = v.signerKid;
  } catch (err) {
    if (err instanceof CheckpointError) throw err;
    throw new CheckpointError(`the signature does not verify: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  const { typ, iss, last_id: lastId, hash, at } = payload;
  if (
    typ !== CHECKPOINT_TYP ||
    typeof iss !== 'string' ||
    !Number.isSafeInteger(lastId) ||
    typeof hash !== 'string' ||
    !HEX64.test(hash) ||
    !Number.isSafeInteger(at)
  ) {
    throw new CheckpointError('the signed payload is not an audit checkpoint');
  }
  return { iss, lastId: lastId as number, hash, at: at as number, kid };
}

/** Whether a JSON value is a checkpoint record (as exported). */
export function isCheckpointRecord(v: unknown): v is { id: number; at: number; last_id: number; hash: string; jws: string } {
  return (
    isRecord(v) &&
    Number.isSafeInteger(v.id) &&
    Number.isSafeInteger(v.at) &&
    Number.isSafeInteger(v.last_id) &&
    typeof v.hash === 'string' &&
    typeof v.jws === 'string'
  );
}

/** The server's public signing keys of a JWK set (trust.jwks). */
export function signingKeysOf(keys: readonly PublicJwk[]): PublicJwk[] {
  return keys.filter((k) => k.use === 'sig');
}
