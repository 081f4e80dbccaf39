/**
 * Sealing and publishing commands: allocate the device's next seq (registry
 * transaction), seal to its registered encryption key, record, publish at QoS 1.
 * Fails closed: a device without a key gets nothing.
 *
 * The registry writes of concurrent sends (a rollout, the HTTP API) are group
 * committed: one IMMEDIATE transaction per batch for the seqs, one for the
 * records, one for the sent marks. A command is published only after the
 * transaction recording it committed, as before.
 */
import { createHash, randomUUID } from 'node:crypto';
import { type Action, type ActionParams, checkCommandInput, CodedError, commandTopic, isRecord } from '../../protocol/index.js';
import { paramsUser, serverAction } from './actions/table.js';
import { GroupCommit } from './group-commit.js';
import { RegistryError } from '../storage/errors.js';
import { isUpgradeRequest, manifestArtifactSha256, resolveUpgrade } from './actions/upgrade-params.js';
import type { CommandRecord, DeviceRecord, NewCommand } from '../storage/records.js';
import type { Storage } from '../storage/types.js';
import { sealInProcess, type Seal } from './seal-pool.js';
import type { ServerKeys } from '../keys/server-keys.js';
import type { Logger } from '../../lib/log.js';

export type Publish = (topic: string, payload: string) => Promise<void>;

export interface SendRequest {
  deviceId: string;
  action: Action;
  /**
   * The `user_id` claim; defaults to the user the device is bound to. For an
   * `update`, a user other than the device's is a re-binding (`params.user_id`).
   * A number (the seed's user ids) is taken as its decimal text.
   */
  userId?: string | number;
  params?: unknown;
  ttlSeconds?: number;
  fanoutId?: string;
}

export interface SenderContext {
  storage: Storage;
  keys: ServerKeys;
  topicPrefix: string;
  publish: Publish;
  /** How to seal (default: in this thread; a SealPool spreads it over worker threads). */
  seal?: Seal;
  /** Where `send` logs `command.sent` / `command.publish_failed` (default: nowhere). */
  log?: Logger;
}

/** How `send` returns: what its callers differ in. */
export interface SendOptions {
  /**
   * 'await' (default): once the broker took the command (PUBACK) and it is
   * marked sent. 'background': once it is sealed and recorded; the publish
   * completes afterwards (a failure is logged; the command stays recorded, unsent).
   */
  publish?: 'await' | 'background';
  /** Who asked, for the log line and the command.create audit row (e.g. 'http'). */
  via?: string;
  /** The principal who asked (an operator's name), for the audit row. */
  by?: string;
}

/** SHA-256 (base64url) of the canonical JSON of params: what the registry keeps instead of the params. */
export function paramsDigest(params: unknown): string {
  return createHash('sha256').update(canonicalJson(params)).digest('base64url');
}

export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    return `{${Object.keys(obj)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/** A command checked in full, ready for a seq: what `seal` signs. */
export interface PreparedCommand {
  deviceId: string;
  action: Action;
  userId: string;
  params: ActionParams;
  /** The user the device is bound to once the command is applied (request, update naming a user). */
  bindUser: string | undefined;
  /** An upgrade's release artifact (SHA-256 hex), when it is a release the server stores (the chunk server serves it). */
  releaseSha256: string | undefined;
}

/** A user id as text: the seed's numeric ids (non-negative integers) become their decimal text; anything else is left for validation. */
export function userIdText(value: unknown): unknown {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? String(value) : value;
}

/**
 * Checks everything about a command before a seq is taken or anything is sent:
 * the device (registered, not decommissioned, has an encryption key), the user,
 * the params against the action's schema, the lifetime. Throws the refusal.
 */
export async function prepareCommand(storage: Storage, keys: ServerKeys, req: SendRequest): Promise<PreparedCommand> {
  const device = await storage.devices.require(req.deviceId);
  const named = userIdText(req.userId);
  let raw: unknown = req.params ?? {};
  if (isRecord(raw) && raw.user_id !== undefined) raw = { ...raw, user_id: userIdText(raw.user_id) };
  if (serverAction(req.action).userInParams && typeof named === 'string' && named !== device.userId && isRecord(raw)) {
    // The seed's `update DEVICE USER`: naming a user other than the device's re-binds the device to it.
    if (raw.user_id === undefined) raw = { ...raw, user_id: named };
    else if (raw.user_id !== named)
      throw new CodedError('E_USAGE', `the user ${named} and params.user_id ${String(raw.user_id)} disagree: name the new user once`);
  }
  // An upgrade by release (`release`, `arch`, ...) becomes the manifest of the build for the device's architecture.
  let releaseSha256: string | undefined;
  if (serverAction(req.action).byRelease) {
    if (isUpgradeRequest(raw)) {
      const resolved = await resolveUpgrade(storage, device, raw);
      raw = resolved.params;
      releaseSha256 = resolved.release.sha256;
    } else if (isRecord(raw) && typeof raw.manifest === 'string') {
      const sha = manifestArtifactSha256(raw.manifest);
      releaseSha256 = sha !== undefined && (await storage.releases.bySha256(sha)) ? sha : undefined;
    }
  }
  const userId = named ?? device.userId ?? paramsUser(req.action, raw);
  if (userId === undefined) throw new CodedError('E_USAGE', `device ${req.deviceId} is bound to no user yet: pass a user id`);
  if (typeof userId !== 'string')
    throw new CodedError('E_USAGE', `user id ${JSON.stringify(userId)} must be text of 1-128 characters or a non-negative integer`);
  const params = checkCommandInput({
    serverId: keys.serverId,
    deviceId: req.deviceId,
    action: req.action,
    userId,
    params: raw,
    ...(req.ttlSeconds ? { ttlSeconds: req.ttlSeconds } : {}),
  });
  if (device.state === 'decommissioned')
    throw new RegistryError('E_DECOMMISSIONED', `device ${req.deviceId} is decommissioned; provision it again with a new token or bundle`);
  if (!device.encryption) throw new RegistryError('E_NO_KEY', `device ${req.deviceId} has no registered encryption key: nothing is sent (never in plaintext)`);
  const bindUser = serverAction(req.action).bindUser(userId, params);
  return { deviceId: req.deviceId, action: req.action, userId, params, bindUser, releaseSha256 };
}

export class CommandSender {
  readonly #ctx: SenderContext;
  readonly #seqs: GroupCommit<string, { seq: number; device: DeviceRecord }>;
  readonly #records: GroupCommit<NewCommand, true>;
  readonly #sent: GroupCommit<string, null>;

  constructor(ctx: SenderContext) {
    this.#ctx = ctx;
    const { storage } = ctx;
    this.#seqs = new GroupCommit<string, { seq: number; device: DeviceRecord }>((ids) => storage.seq.allocateMany(ids));
    this.#records = new GroupCommit((cs) => storage.commands.recordMany(cs));
    this.#sent = new GroupCommit(async (jtis) => {
      await storage.commands.markSentMany(jtis);
      return jtis.map(() => null);
    });
  }

  /** See `prepareCommand`. */
  prepare(req: SendRequest): Promise<PreparedCommand> {
    return prepareCommand(this.#ctx.storage, this.#ctx.keys, req);
  }

  /** Seals and records a command without publishing it; `publish` afterwards. */
  async seal(req: SendRequest, actor: { via?: string; by?: string } = {}): Promise<{ command: CommandRecord; token: string }> {
    const { storage, keys } = this.#ctx;
    const { userId, params, bindUser, releaseSha256 } = await this.prepare(req);
    const { seq, device: current } = await this.#seqs.submit(req.deviceId);
    const recipient = current.encryption;
    if (!recipient) throw new CodedError('E_NO_KEY', `device ${req.deviceId} has no encryption key`);
    const jti = randomUUID();
    const { token, claims } = await (this.#ctx.seal ?? sealInProcess)(
      {
        serverId: keys.serverId,
        deviceId: req.deviceId,
        action: req.action,
        userId,
        params,
        seq,
        jti,
        ...(req.ttlSeconds ? { ttlSeconds: req.ttlSeconds } : {}),
      },
      { signer: keys.signing, recipient },
    );
    await this.#records.submit({
      jti,
      deviceId: req.deviceId,
      action: req.action,
      userId,
      paramsDigest: paramsDigest(params),
      seq,
      encryptionKid: recipient.kid,
      sealed: token,
      expiresAt: claims.exp * 1000,
      ...(req.fanoutId ? { fanoutId: req.fanoutId } : {}),
      ...(bindUser ? { bindUser } : {}),
      ...(releaseSha256 ? { releaseSha256 } : {}),
      ...(actor.via !== undefined ? { via: actor.via } : {}),
      ...(actor.by !== undefined ? { by: actor.by } : {}),
    });
    return { command: (await storage.commands.get(jti)) as CommandRecord, token };
  }

  /** Publishes a sealed command (QoS 1) and marks it sent. */
  async publish(deviceId: string, jti: string, token: string): Promise<void> {
    await this.#ctx.publish(commandTopic(this.#ctx.topicPrefix, deviceId), token);
    await this.#sent.submit(jti);
  }

  /**
   * Check, seal, record and publish: the one send path (ServerCore.send adds
   * following the ack). The rollout engine seals and publishes in two steps
   * instead (it marks the command sent under its lease in between: fencing).
   */
  async send(req: SendRequest, options: SendOptions = {}): Promise<CommandRecord> {
    const { command, token } = await this.seal(req, {
      ...(options.via !== undefined ? { via: options.via } : {}),
      ...(options.by !== undefined ? { by: options.by } : {}),
    });
    const log = this.#ctx.log;
    const via = options.via !== undefined ? { via: options.via } : {};
    const published = this.publish(req.deviceId, command.jti, token).then(() =>
      log?.info('command.sent', { device: command.deviceId, action: command.action, seq: command.seq, jti: command.jti, ...via }),
    );
    if (options.publish === 'background') {
      published.catch((err: unknown) =>
        log?.error('command.publish_failed', { device: command.deviceId, jti: command.jti, reason: err instanceof Error ? err.message : String(err), ...via }),
      );
      return command;
    }
    await published;
    return (await this.#ctx.storage.commands.get(command.jti)) as CommandRecord;
  }
}
