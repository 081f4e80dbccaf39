/**
 * Sealing and publishing commands: allocate the device's next seq (registry
 * transaction), seal to its registered encryption key, record, publish at QoS 1.
 * Fails closed: a device without a key gets nothing.
 *
 * The registry writes of concurrent sends (a fan-out, the HTTP API) are group
 * committed: one IMMEDIATE transaction per batch for the seqs, one for the
 * records, one for the sent marks. A command is published only after the
 * transaction recording it committed, as before.
 */
import { createHash, randomUUID } from 'node:crypto';
import { commandTopic, validateParams, type Action } from '../protocol/index.js';
import { CliError } from './cli-support.js';
import { GroupCommit } from './group-commit.js';
import { sealInProcess, type Seal } from './seal-pool.js';
import type { NewCommand, Registry } from './registry/registry.js';
import type { CommandRecord, DeviceRecord } from './registry/types.js';
import type { ServerKeys } from './server-keys.js';

export type Publish = (topic: string, payload: string) => Promise<void>;

export interface SendRequest {
  deviceId: string;
  action: Action;
  /** The `user_id` claim; defaults to the user the device is bound to. */
  userId?: string;
  params?: unknown;
  ttlSeconds?: number;
  fanoutId?: string;
}

export interface SenderContext {
  registry: Registry;
  keys: ServerKeys;
  topicPrefix: string;
  publish: Publish;
  /** How to seal (default: in this thread; a SealPool spreads it over worker threads). */
  seal?: Seal;
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

export class CommandSender {
  readonly #ctx: SenderContext;
  readonly #seqs: GroupCommit<string, { seq: number; device: DeviceRecord }>;
  readonly #records: GroupCommit<NewCommand, true>;
  readonly #sent: GroupCommit<string, null>;

  constructor(ctx: SenderContext) {
    this.#ctx = ctx;
    const { registry } = ctx;
    this.#seqs = new GroupCommit<string, { seq: number; device: DeviceRecord }>((ids) => registry.allocateSeqs(ids));
    this.#records = new GroupCommit((cs) => registry.recordCommands(cs));
    this.#sent = new GroupCommit((jtis) => {
      registry.markSentMany(jtis);
      return jtis.map(() => null);
    });
  }

  /** Seals and records a command without publishing it; `publish` afterwards. */
  async seal(req: SendRequest): Promise<{ command: CommandRecord; token: string }> {
    const { registry, keys } = this.#ctx;
    const params = validateParams(req.action, req.params ?? {});
    const device = registry.requireDevice(req.deviceId);
    const userId = req.userId ?? device.userId ?? undefined;
    if (userId === undefined) throw new CliError('E_USAGE', `device ${req.deviceId} is bound to no user yet: pass a user id`, 2);
    const { seq, device: current } = await this.#seqs.submit(req.deviceId);
    const recipient = current.encryption;
    if (!recipient) throw new CliError('E_NO_KEY', `device ${req.deviceId} has no encryption key`, 1);
    const jti = randomUUID();
    const { token, claims } = await (this.#ctx.seal ?? sealInProcess)(
      { serverId: keys.serverId, deviceId: req.deviceId, action: req.action, userId, params, seq, jti, ...(req.ttlSeconds ? { ttlSeconds: req.ttlSeconds } : {}) },
      { signer: keys.signing, recipient },
    );
    const bindUser = req.action === 'request' ? userId : req.action === 'update' && 'user_id' in params && typeof params.user_id === 'string' ? params.user_id : undefined;
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
    });
    return { command: registry.getCommand(jti) as CommandRecord, token };
  }

  /** Publishes a sealed command (QoS 1) and marks it sent. */
  async publish(deviceId: string, jti: string, token: string): Promise<void> {
    await this.#ctx.publish(commandTopic(this.#ctx.topicPrefix, deviceId), token);
    await this.#sent.submit(jti);
  }

  /** Seal, record and publish. */
  async send(req: SendRequest): Promise<CommandRecord> {
    const { command, token } = await this.seal(req);
    await this.publish(req.deviceId, command.jti, token);
    return this.#ctx.registry.getCommand(command.jti) as CommandRecord;
  }
}
