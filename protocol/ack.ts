/** Acks: device -> server, signed by the device and encrypted to the server. */
import { randomUUID } from 'node:crypto';
import { ClaimReader, checkTimes, type ClockPolicy } from './claims.js';
import { ProtocolError } from './errors.js';
import type { KeyRing } from './keyring.js';
import { isRecord } from './guards.js';
import { openSealed } from './open.js';
import { sealClaims, type SealKeys } from './seal.js';
import { assertValidId } from './topics.js';

/** `rolled_back`: an upgrade whose new release ran and was switched back to the previous one (the code says why). */
export const ACK_STATUSES = ['applied', 'rejected', 'failed', 'rolled_back'] as const;
export type AckStatus = (typeof ACK_STATUSES)[number];
const CODE = /^[A-Z][A-Z0-9_]{0,63}$/;

export interface AckClaims {
  iss: string;
  aud: string;
  iat: number;
  jti: string;
  /** jti of the command acknowledged. */
  ref: string;
  /** seq of the command acknowledged (0 when it could not be read). */
  seq: number;
  status: AckStatus;
  /** `OK` when applied, else a stable error code. */
  code: string;
  detail: string;
  /** Per-action results, e.g. `{ keys: JwkSet }` after rotate or `{ report }` after selftest. */
  result?: Record<string, unknown>;
}

export interface AckInput {
  deviceId: string;
  serverId: string;
  ref: string;
  seq: number;
  status: AckStatus;
  code: string;
  detail?: string;
  result?: Record<string, unknown>;
  now?: number;
}

export async function sealAck(input: AckInput, keys: SealKeys): Promise<{ token: string; claims: AckClaims }> {
  assertValidId(input.deviceId, 'device id');
  assertValidId(input.serverId, 'server id');
  if (!CODE.test(input.code)) throw new ProtocolError('E_CLAIMS', `ack code "${input.code}" must be an upper-case code like E_PARAMS`);
  const claims: AckClaims = {
    iss: input.deviceId,
    aud: input.serverId,
    iat: Math.floor((input.now ?? Date.now()) / 1000),
    jti: randomUUID(),
    ref: input.ref,
    seq: input.seq,
    status: input.status,
    code: input.code,
    detail: (input.detail ?? '').slice(0, 1024),
    ...(input.result ? { result: input.result } : {}),
  };
  return { token: await sealClaims({ ...claims }, keys), claims };
}

export interface OpenAckOptions {
  serverId: string;
  /** The device the ack is expected from (e.g. from the topic); unchecked when absent. */
  deviceId?: string;
  /** The server's private encryption keys. */
  decryption: KeyRing;
  /** The device's registered signing keys. */
  verification: KeyRing;
  clock?: ClockPolicy;
  maxBytes?: number;
}

export async function openAck(input: string | Uint8Array, opts: OpenAckOptions): Promise<{ claims: AckClaims; signerKid: string; jws: string }> {
  const v = await openSealed(input, opts);
  const r = new ClaimReader(v.payload);
  const status = r.string('status', 16);
  if (!(ACK_STATUSES as readonly string[]).includes(status)) throw new ProtocolError('E_CLAIMS', `ack status "${status}" is unknown`);
  const code = r.string('code', 64);
  if (!CODE.test(code)) throw new ProtocolError('E_CLAIMS', 'ack code is not a stable code');
  const claims: AckClaims = {
    iss: r.string('iss', 64),
    aud: r.string('aud', 64),
    iat: r.integer('iat'),
    jti: r.uuid('jti'),
    ref: r.string('ref', 64),
    seq: r.integer('seq', 0),
    status: status as AckStatus,
    code,
    detail: r.optionalString('detail', 1024) ?? '',
  };
  const result = r.optionalObject('result');
  if (result) claims.result = result;
  if (claims.aud !== opts.serverId) throw new ProtocolError('E_AUDIENCE', `ack aud "${claims.aud}" is not ${opts.serverId}`);
  if (opts.deviceId !== undefined && claims.iss !== opts.deviceId) throw new ProtocolError('E_ISSUER', `ack from "${claims.iss}" arrived for ${opts.deviceId}`);
  checkTimes(claims.iat, undefined, opts.clock ?? { trusted: false });
  return { claims, signerKid: v.signerKid, jws: v.jws };
}

export function isAckResultKeys(result: unknown): result is { keys: { keys: unknown[] } } {
  return isRecord(result) && isRecord(result.keys) && Array.isArray(result.keys.keys);
}
