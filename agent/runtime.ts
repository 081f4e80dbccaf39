/**
 * What the pipeline and the actions share within one agent: its config,
 * keys, state, trust anchors, GPIO and MQTT session, and the two outputs
 * (acks and the exit status). Nothing here is global: one per agent.
 */
import { readFile } from 'node:fs/promises';
import { KeyRing, ackTopic, commandTopic, enrollTopic, sealAck, type AckInput, type ClockPolicy, type PrivateJwk } from '../protocol/index.js';
import type { AgentConfig } from './config.js';
import type { BoardIo } from './gpio/index.js';
import type { KeyStore } from './store/keystore.js';
import type { Logger } from '../lib/log.js';
import type { MqttSession, SessionBroker } from './net/mqtt-session.js';
import type { StateStore, StoredBroker } from './store/state.js';
import type { TrustAnchors } from './store/trust.js';

/** An ack's content; the device and server ids come from the config. */
export type AckFields = Omit<AckInput, 'deviceId' | 'serverId' | 'now'>;

export interface AgentTopics {
  command: string;
  ack: string;
  enroll: string;
}

/** The device's topics under the configured prefix. */
export function agentTopics(config: AgentConfig): AgentTopics {
  const p = config.topic_prefix;
  return { command: commandTopic(p, config.device_id), ack: ackTopic(p, config.device_id), enroll: enrollTopic(p, config.device_id) };
}

/** Everything a runtime is made of, each complete. */
export interface AgentRuntimeParts {
  readonly config: AgentConfig;
  readonly log: Logger;
  readonly keystore: KeyStore;
  readonly store: StateStore;
  readonly trust: TrustAnchors;
  readonly io: BoardIo;
  readonly session: MqttSession;
  /** The decryption ring of the key store's keys now (refreshDecryption rebuilds it). */
  readonly decryption: KeyRing;
  readonly clock: ClockPolicy;
  readonly requestExit: (status: number, why: string) => void;
  /** Test hook (crash simulation): runs after a command's state is saved, before its PUBACK. */
  readonly afterPersist?: ((action: string) => void | Promise<void>) | undefined;
}

export class AgentRuntime {
  readonly config: AgentConfig;
  readonly log: Logger;
  readonly keystore: KeyStore;
  readonly store: StateStore;
  readonly trust: TrustAnchors;
  readonly io: BoardIo;
  readonly session: MqttSession;
  readonly topics: AgentTopics;
  readonly requestExit: (status: number, why: string) => void;
  readonly afterPersist: ((action: string) => void | Promise<void>) | undefined;
  decryption: KeyRing;
  clock: ClockPolicy;
  #pendingAcks = new Set<Promise<void>>();
  #stopping = false;

  constructor(parts: AgentRuntimeParts) {
    this.config = parts.config;
    this.log = parts.log;
    this.keystore = parts.keystore;
    this.store = parts.store;
    this.trust = parts.trust;
    this.io = parts.io;
    this.session = parts.session;
    this.decryption = parts.decryption;
    this.clock = parts.clock;
    this.requestExit = parts.requestExit;
    this.afterPersist = parts.afterPersist;
    this.topics = agentTopics(parts.config);
  }

  get deviceId(): string {
    return this.config.device_id;
  }

  get stopping(): boolean {
    return this.#stopping;
  }

  markStopping(): void {
    this.#stopping = true;
  }

  /** Rebuilds the decryption ring from the key store (after enrollment, rotate, or removing the previous key). */
  async refreshDecryption(): Promise<void> {
    this.decryption = await KeyRing.create(this.keystore.decryptionKeys());
  }

  /** Seals an ack with `signer` (default: the current signing key) to the server's encryption key. */
  async sealAck(fields: AckFields, signer?: PrivateJwk): Promise<string> {
    const key = signer ?? this.keystore.signingKey;
    if (!key) throw new Error('no signing key to seal the ack with');
    const { token } = await sealAck(
      { deviceId: this.deviceId, serverId: this.config.server_id, ...fields, detail: fields.detail ?? '' },
      { signer: key, recipient: this.trust.encryption },
    );
    return token;
  }

  /**
   * Publishes a sealed ack (QoS 1) in the background; while offline it waits
   * for the session to be back (up to `waitMs`), then gives up with a log line.
   */
  publishAck(token: string, what: Record<string, string | number>, waitMs = 10 * 60_000): void {
    void this.publishAckConfirmed(token, what, waitMs);
  }

  /** As publishAck; resolves true once the broker PUBACKed it, false when it gave up (offline past `waitMs`, or stopping). */
  publishAckConfirmed(token: string, what: Record<string, string | number>, waitMs = 10 * 60_000): Promise<boolean> {
    const p = this.#publishWithWait(token, what, waitMs);
    const tracked = p.then(() => undefined).finally(() => this.#pendingAcks.delete(tracked));
    this.#pendingAcks.add(tracked);
    return p;
  }

  async #publishWithWait(token: string, what: Record<string, string | number>, waitMs: number): Promise<boolean> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      if (this.session.ready) {
        try {
          await this.session.publish(this.topics.ack, token);
          this.log.info('ack published', what);
          return true;
        } catch (err) {
          this.log.warn('ack publish failed; retrying when connected', { ...what, reason: (err as Error).message });
        }
      }
      const left = deadline - Date.now();
      if (left <= 0 || this.#stopping) {
        this.log.error('ack not published (broker unreachable); the server will see no answer for this command', what);
        return false;
      }
      await this.session.waitReady(Math.min(left, 30_000));
      if (this.#stopping && !this.session.ready) {
        this.log.warn('stopping with an ack unpublished', what);
        return false;
      }
    }
  }

  /** Waits (bounded) for acks being published. */
  async flushAcks(timeoutMs: number): Promise<void> {
    if (this.#pendingAcks.size === 0) return;
    await Promise.race([Promise.allSettled([...this.#pendingAcks]), new Promise((r) => setTimeout(r, timeoutMs).unref())]);
  }

  /** The broker to use: an `update`'s settings when present, else the config file's. */
  effectiveBroker(stored: StoredBroker | undefined = this.store.state.settings.broker): Promise<SessionBroker> {
    return effectiveBroker(this.config, stored);
  }
}

/** The broker to use: an `update`'s settings when present, else the config file's (with the config's CA, client certificate and key). */
export async function effectiveBroker(config: AgentConfig, stored: StoredBroker | undefined): Promise<SessionBroker> {
  const b = config.broker;
  const cert = b.cert ? await readFile(b.cert) : undefined;
  const key = b.key ? await readFile(b.key) : undefined;
  if (stored) {
    const ca = stored.ca ?? (b.ca ? await readFile(b.ca) : undefined);
    return {
      url: stored.url,
      protocolVersion: stored.protocol_version ?? b.protocol_version,
      ...(ca ? { ca } : {}),
      ...(cert ? { cert } : {}),
      ...(key ? { key } : {}),
    };
  }
  const ca = b.ca ? await readFile(b.ca) : undefined;
  return { url: b.url, protocolVersion: b.protocol_version, ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}) };
}
