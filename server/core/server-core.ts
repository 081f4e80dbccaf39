/**
 * The server core: what every way of running the server shares (`serve`,
 * `send`, the HTTP API, the rollout engine are adapters over it). It owns the
 * command sender (prepare, seal, record, publish: the one send path), the ack
 * waiters, the inbound handling (enrollments, acks, reports) and the session
 * wiring (ack-after-handling.ts). The MQTT sessions are the caller's: it
 * connects them with `core.handleMessage` and names the one that publishes.
 */
import type { MqttClient } from 'mqtt';
import { CodedError, type ReportClaims } from '../../protocol/index.js';
import { silentLogger, type Logger } from '../../lib/log.js';
import type { CommandRecord } from '../storage/records.js';
import type { Storage } from '../storage/types.js';
import type { ServerKeys } from '../keys/server-keys.js';
import { ackAfterHandling, type AckAfterHandlingOptions } from './ack-after-handling.js';
import { AckWaiters } from './ack-waiters.js';
import { CommandSender, type SendOptions, type SendRequest } from './command-sender.js';
import type { EnrollRefusals } from './enroll-refusals.js';
import { handleInbound, type InboundContext, type InboundResult } from './inbound.js';
import { publishQos1 } from './mqtt-connection.js';
import type { ReportIntake } from './report-intake.js';
import type { Seal } from './seal-pool.js';

export interface ServerCoreOptions {
  storage: Storage;
  keys: ServerKeys;
  topicPrefix: string;
  log?: Logger;
  /** How to seal (default: in this thread; a SealPool spreads it over worker threads). */
  seal?: Seal;
  /** serve's: refused enrollments aggregated in the audit (without: each audited). */
  enrollRefusals?: EnrollRefusals;
  /** serve's: report rate limit and hold (without: each report opened at once). */
  reports?: ReportIntake;
  /** How often an ack waiter looks in the registry (another process may record the ack). */
  ackPollMs?: number;
}

/** What the process running the core is told of inbound messages. */
export interface InboundHooks {
  /** Every ack recorded (after the waiters were told). */
  onAck?: (command: CommandRecord) => void;
  /** Every report recorded (newer than the device's last). */
  onReport?: (deviceId: string, claims: ReportClaims) => void;
  /** Every message's result, held reports' late ones included. */
  onResult?: (result: InboundResult) => void;
}

/** `core.send`'s options: what the callers (CLI `send`, HTTP API, `RunningServer.send`) differ in. */
export interface CoreSendOptions extends SendOptions {
  /** Follow the ack: wait up to this long for it (undefined: do not wait). */
  ackTimeoutMs?: number;
  /** Told of the command once it is sent (or, with `publish: 'background'`, recorded), before the ack is waited for. */
  onSent?: (command: CommandRecord) => void;
}

export interface CoreSent {
  command: CommandRecord;
  /** The command as acked; undefined when the ack was not followed or did not come in time. */
  acked: CommandRecord | undefined;
}

export class ServerCore {
  readonly storage: Storage;
  readonly keys: ServerKeys;
  readonly topicPrefix: string;
  readonly log: Logger;
  readonly sender: CommandSender;
  readonly waiters: AckWaiters;
  /** For every session of this core: each message handled, then acknowledged. Messages wait for `start`. */
  readonly handleMessage: MqttClient['handleMessage'];
  readonly #options: ServerCoreOptions;
  #publisher: MqttClient | undefined;
  #ctx: InboundContext | undefined;
  #hooks: InboundHooks = {};
  readonly #started: Promise<InboundContext>;
  #start: (ctx: InboundContext) => void = () => undefined;

  constructor(options: ServerCoreOptions, wiring: Pick<AckAfterHandlingOptions, 'retry'> = {}) {
    this.#options = options;
    this.storage = options.storage;
    this.keys = options.keys;
    this.topicPrefix = options.topicPrefix;
    this.log = options.log ?? silentLogger;
    this.sender = new CommandSender({
      storage: options.storage,
      keys: options.keys,
      topicPrefix: options.topicPrefix,
      log: this.log,
      publish: (topic, payload) => this.#publish(topic, payload),
      ...(options.seal ? { seal: options.seal } : {}),
    });
    this.waiters = new AckWaiters(options.storage, { log: this.log, ...(options.ackPollMs !== undefined ? { pollMs: options.ackPollMs } : {}) });
    this.#started = new Promise<InboundContext>((resolve) => (this.#start = resolve));
    this.handleMessage = ackAfterHandling((topic, payload) => this.handle(topic, payload), {
      onResult: (result) => this.#hooks.onResult?.(result),
      ...wiring,
    });
  }

  /** The session commands are published on (QoS 1). */
  publishOn(client: MqttClient): void {
    this.#publisher = client;
  }

  /** Inbound handling starts (messages that came before waited): the hooks are told from now on. */
  start(hooks: InboundHooks = {}): void {
    this.#hooks = hooks;
    const ctx: InboundContext = {
      storage: this.storage,
      keys: this.keys,
      topicPrefix: this.topicPrefix,
      sender: this.sender,
      log: this.log,
      onAck: (command) => {
        this.waiters.notify(command);
        this.#hooks.onAck?.(command);
      },
      onReport: (deviceId, claims) => this.#hooks.onReport?.(deviceId, claims),
      onLateResult: (result) => this.#hooks.onResult?.(result),
      ...(this.#options.enrollRefusals ? { enrollRefusals: this.#options.enrollRefusals } : {}),
      ...(this.#options.reports ? { reports: this.#options.reports } : {}),
    };
    this.#ctx = ctx;
    this.#start(ctx);
  }

  /** Handles one inbound message (enrollment, ack, report); never throws. */
  handle(topic: string, payload: Buffer | string): Promise<InboundResult> {
    const ctx = this.#ctx;
    return ctx ? handleInbound(ctx, topic, payload) : this.#started.then((c) => handleInbound(c, topic, payload));
  }

  /**
   * THE send path: checks, seals, records and publishes one command (see
   * CommandSender.send for `publish`), then, with `ackTimeoutMs`, waits for its ack.
   */
  async send(request: SendRequest, options: CoreSendOptions = {}): Promise<CoreSent> {
    const { ackTimeoutMs, onSent, ...sendOptions } = options;
    const command = await this.sender.send(request, sendOptions);
    onSent?.(command);
    if (ackTimeoutMs === undefined) return { command, acked: undefined };
    const acked = await this.waiters.wait(command.jti, ackTimeoutMs);
    return { command, acked: acked?.ackStatus ? acked : undefined };
  }

  /** Stops waiting for acks (the sessions and the storage are the caller's to close). */
  close(): void {
    this.waiters.cancelAll();
  }

  #publish(topic: string, payload: string): Promise<void> {
    const client = this.#publisher;
    if (!client) return Promise.reject(new CodedError('E_INTERNAL', 'no MQTT session to publish on (ServerCore.publishOn was not called)'));
    return publishQos1(client, topic, payload);
  }
}
