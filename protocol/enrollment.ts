/**
 * Enrollment: device -> server, encrypted to the server's pinned key and signed
 * by the device's new signing key (proof of possession). The only message whose
 * signer key travels inside it; the server trusts it only with a valid token.
 */
import { randomUUID } from 'node:crypto';
import { ClaimReader, checkTimes, type ClockPolicy } from './claims.js';
import { unverifiedJwsPayload } from './compact.js';
import { ProtocolError } from './errors.js';
import { KeyRing } from './keyring.js';
import { parseJwkSet, toJwkSet, type JwkSet, type PublicJwk } from './keys.js';
import { isRecord } from './guards.js';
import { decryptSealed, verifyJws } from './open.js';
import { sealClaims, type SealKeys } from './seal.js';
import { assertValidId } from './topics.js';

export interface EnrollmentClaims {
  iss: string;
  aud: string;
  iat: number;
  exp: number;
  jti: string;
  /** The one-time enrollment token written at flashing. */
  token: string;
  /** The device's public signing and encryption keys. */
  keys: JwkSet;
}

export interface EnrollmentInput {
  deviceId: string;
  serverId: string;
  token: string;
  signing: PublicJwk;
  encryption: PublicJwk;
  ttlSeconds?: number;
  now?: number;
}

/** `keys.signer` must be the private half of `input.signing`. */
export async function sealEnrollment(input: EnrollmentInput, keys: SealKeys): Promise<{ token: string; claims: EnrollmentClaims }> {
  assertValidId(input.deviceId, 'device id');
  assertValidId(input.serverId, 'server id');
  if (keys.signer.kid !== input.signing.kid) throw new ProtocolError('E_KEY', 'an enrollment must be signed by the key it enrolls');
  const iat = Math.floor((input.now ?? Date.now()) / 1000);
  const claims: EnrollmentClaims = {
    iss: input.deviceId,
    aud: input.serverId,
    iat,
    exp: iat + (input.ttlSeconds ?? 3600),
    jti: randomUUID(),
    token: input.token,
    keys: toJwkSet([input.signing, input.encryption]),
  };
  return { token: await sealClaims({ ...claims }, keys), claims };
}

export interface OpenedEnrollment {
  claims: EnrollmentClaims;
  signing: PublicJwk;
  encryption: PublicJwk;
}

export interface OpenEnrollmentOptions {
  serverId: string;
  /** The device id of the topic it arrived on; unchecked when absent. */
  topicDeviceId?: string;
  decryption: KeyRing;
  clock?: ClockPolicy;
  maxBytes?: number;
}

/** Decrypts, verifies the self-signature with the enclosed signing key, and checks claims. The token is the caller's to check. */
export async function openEnrollment(input: string | Uint8Array, opts: OpenEnrollmentOptions): Promise<OpenedEnrollment> {
  const d = await decryptSealed(input, opts.decryption, opts.maxBytes);
  const unverified = unverifiedJwsPayload(d.jws);
  if (!isRecord(unverified)) throw new ProtocolError('E_CLAIMS', 'enrollment claims must be a JSON object');
  const { signing, encryption } = await readEnrolledKeys(unverified.keys);
  const selfRing = await KeyRing.create([signing]);
  const v = await verifyJws(d.jws, d.jwsHeader, selfRing);
  const r = new ClaimReader(v.payload);
  const claims: EnrollmentClaims = {
    iss: r.string('iss', 64),
    aud: r.string('aud', 64),
    iat: r.integer('iat'),
    exp: r.integer('exp'),
    jti: r.uuid('jti'),
    token: r.string('token', 256),
    keys: toJwkSet([signing, encryption]),
  };
  assertValidId(claims.iss, 'enrolling device id');
  if (claims.aud !== opts.serverId) throw new ProtocolError('E_AUDIENCE', `enrollment aud "${claims.aud}" is not ${opts.serverId}`);
  if (opts.topicDeviceId !== undefined && opts.topicDeviceId !== claims.iss) {
    throw new ProtocolError('E_AUDIENCE', `enrollment of "${claims.iss}" arrived on the topic of ${opts.topicDeviceId}`);
  }
  checkTimes(claims.iat, claims.exp, opts.clock ?? { trusted: true });
  return { claims, signing, encryption };
}

async function readEnrolledKeys(value: unknown): Promise<{ signing: PublicJwk; encryption: PublicJwk }> {
  let keys: PublicJwk[];
  try {
    keys = await parseJwkSet(value);
  } catch (cause) {
    throw new ProtocolError('E_CLAIMS', `enrollment "keys" is not a valid JWK set: ${(cause as Error).message}`);
  }
  const signing = keys.filter((k) => k.use === 'sig');
  const encryption = keys.filter((k) => k.use === 'enc');
  if (signing.length !== 1 || encryption.length !== 1 || keys.length !== 2) {
    throw new ProtocolError('E_CLAIMS', 'enrollment "keys" must hold exactly one signing and one encryption key');
  }
  return { signing: signing[0] as PublicJwk, encryption: encryption[0] as PublicJwk };
}
