/** Commands: server -> device. Sealing (server side) and opening with every check of docs/DESIGN.md (agent side). */
import { randomUUID } from 'node:crypto';
import { ClaimReader, checkTimes, type ClockPolicy } from './claims.js';
import { ProtocolError, isProtocolError } from './errors.js';
import type { KeyRing } from './keyring.js';
import { DEFAULT_COMMAND_TTL_SECONDS, MAX_TTL_SECONDS } from './limits.js';
import { decryptSealed, verifyJws } from './open.js';
import { isAction, validateParams, type Action, type ParamsByAction } from './params.js';
import type { ReplayGuard } from './replay.js';
import { sealClaims, type SealKeys } from './seal.js';
import { assertValidId } from './topics.js';

/** The claims every command carries, whatever its action. */
export interface CommandClaimsBase {
  iss: string;
  aud: string;
  iat: number;
  exp: number;
  jti: string;
  seq: number;
  device_id: string;
  user_id: string;
}

/**
 * A command's claims, discriminated by `action`: `params` has that action's
 * type (ParamsByAction), so `claims.action === 'update'` narrows `claims.params`
 * to UpdateParams. `CommandClaims<'update'>` is one action's claims.
 */
export type CommandClaims<A extends Action = Action> = { [K in A]: CommandClaimsBase & { action: K; params: ParamsByAction[K] } }[A];

/** One action's claims from the base claims and that action's validated params. */
function withParams<A extends Action>(base: CommandClaimsBase & { action: A }, params: unknown): CommandClaims<A> {
  const claims: CommandClaimsBase & { action: A; params: ParamsByAction[A] } = { ...base, params: validateParams(base.action, params) };
  return claims;
}

export interface CommandInput<A extends Action = Action> {
  serverId: string;
  deviceId: string;
  action: A;
  userId: string;
  params?: unknown;
  seq: number;
  ttlSeconds?: number;
  jti?: string;
  /** Milliseconds since the epoch; defaults to now. */
  now?: number;
}

/**
 * Checks everything of a command that does not depend on its `seq` (ids, lifetime,
 * user id, params) and returns the validated params. Callers that allocate a `seq`
 * run it first, so a refused command uses up nothing.
 */
export function checkCommandInput<A extends Action>(input: Omit<CommandInput<A>, 'seq' | 'jti' | 'now'>): ParamsByAction[A] {
  assertValidId(input.serverId, 'server id');
  assertValidId(input.deviceId, 'device id');
  const ttl = input.ttlSeconds ?? DEFAULT_COMMAND_TTL_SECONDS;
  if (!Number.isSafeInteger(ttl) || ttl < 1 || ttl > MAX_TTL_SECONDS) throw new ProtocolError('E_CLAIMS', `ttl must be 1-${MAX_TTL_SECONDS} s`);
  if (typeof input.userId !== 'string' || input.userId.length === 0 || input.userId.length > 128) {
    throw new ProtocolError('E_CLAIMS', 'user id must be a string of 1-128 characters');
  }
  return validateParams(input.action, input.params ?? {});
}

/** Builds and validates the claims of a command, then seals them. */
export async function sealCommand<A extends Action>(input: CommandInput<A>, keys: SealKeys): Promise<{ token: string; claims: CommandClaims<A> }> {
  if (!Number.isSafeInteger(input.seq) || input.seq < 1) throw new ProtocolError('E_CLAIMS', 'seq must be an integer >= 1');
  const params = checkCommandInput(input);
  const ttl = input.ttlSeconds ?? DEFAULT_COMMAND_TTL_SECONDS;
  const iat = Math.floor((input.now ?? Date.now()) / 1000);
  const claims: CommandClaimsBase & { action: A; params: ParamsByAction[A] } = {
    iss: input.serverId,
    aud: input.deviceId,
    iat,
    exp: iat + ttl,
    jti: input.jti ?? randomUUID(),
    seq: input.seq,
    device_id: input.deviceId,
    action: input.action,
    user_id: input.userId,
    params,
  };
  return { token: await sealClaims({ ...claims }, keys), claims };
}

export interface OpenCommandOptions {
  /** This device's id. */
  deviceId: string;
  /** The device id in the topic the message arrived on, when it came over MQTT. */
  topicDeviceId?: string;
  /** The expected issuer (server id); unchecked when absent. */
  serverId?: string;
  /** This device's private encryption keys (current and, after a rotate, previous). */
  decryption: KeyRing;
  /** The pinned server signing keys. */
  verification: KeyRing;
  clock: ClockPolicy;
  replay?: ReplayGuard;
  maxBytes?: number;
}

export interface OpenedCommand {
  claims: CommandClaims;
  decryptKid: string;
  signerKid: string;
}

/**
 * Opens a command in the order of docs/DESIGN.md ("What each side checks"): size/shape/alg/zip/kid, decrypt, verify,
 * audience and device id, times, replay, params. A refusal after the signature
 * verified carries `refused` (jti, seq) so the caller can send a `rejected` ack.
 */
export async function openCommand(input: string | Uint8Array, opts: OpenCommandOptions): Promise<OpenedCommand> {
  const d = await decryptSealed(input, opts.decryption, opts.maxBytes);
  const v = await verifyJws(d.jws, d.jwsHeader, opts.verification);
  const raw = v.payload;
  let addressed = false;
  try {
    const claims = readCommandClaims(raw, opts, () => (addressed = true));
    await opts.replay?.check(claims.seq, claims.jti);
    return { claims: withParams(claims, raw.params), decryptKid: d.decryptKid, signerKid: v.signerKid };
  } catch (err) {
    if (!isProtocolError(err)) throw err;
    throw err.withRefused({
      signerKid: v.signerKid,
      ...(typeof raw.jti === 'string' && raw.jti.length <= 64 ? { jti: raw.jti } : {}),
      ...(Number.isSafeInteger(raw.seq) && (raw.seq as number) >= 0 ? { seq: raw.seq as number } : {}),
      ...(typeof raw.action === 'string' && raw.action.length <= 32 ? { action: raw.action } : {}),
      ...(addressed ? { addressed: true } : {}),
    });
  }
}

function readCommandClaims(raw: Record<string, unknown>, opts: OpenCommandOptions, onAddressed: () => void): CommandClaimsBase & { action: Action } {
  const r = new ClaimReader(raw);
  const claims = {
    iss: r.string('iss', 64),
    aud: r.string('aud', 64),
    iat: r.integer('iat'),
    exp: r.integer('exp'),
    jti: r.uuid('jti'),
    seq: r.integer('seq', 1),
    device_id: r.string('device_id', 64),
    action: r.string('action', 32),
    user_id: r.string('user_id', 128),
  };
  r.object('params');
  if (claims.aud !== opts.deviceId) throw new ProtocolError('E_AUDIENCE', `aud "${claims.aud}" is not this device (${opts.deviceId})`);
  if (claims.device_id !== opts.deviceId) throw new ProtocolError('E_AUDIENCE', `device_id "${claims.device_id}" is not this device (${opts.deviceId})`);
  if (opts.topicDeviceId !== undefined && opts.topicDeviceId !== opts.deviceId) {
    throw new ProtocolError('E_AUDIENCE', `arrived on the topic of device "${opts.topicDeviceId}", not ${opts.deviceId}`);
  }
  if (opts.serverId !== undefined && claims.iss !== opts.serverId) throw new ProtocolError('E_ISSUER', `iss "${claims.iss}" is not ${opts.serverId}`);
  onAddressed();
  checkTimes(claims.iat, claims.exp, opts.clock);
  if (!isAction(claims.action)) throw new ProtocolError('E_ACTION', `unknown action "${claims.action}"`);
  return { ...claims, action: claims.action };
}
