/**
 * The agent's MQTT session (mqtt.js): fixed client id, `clean: false`, one
 * QoS 1 subscription (the device's command topic), PUBACK only after the
 * handler has applied and persisted the command (`handleMessage` override:
 * mqtt.js sends the PUBACK when its callback is called), no QoS 0 offline
 * queue, TLS with the pinned CA, and reconnects managed here with
 * exponential backoff and full jitter (mqtt.js retries at a fixed period):
 * `reconnectPeriod` is 0 and the `close` handler schedules the next attempt.
 *
 * A session holds one timer at most (the pending reconnect), and none while
 * connected, so many sessions fit in one process.
 */
import { CodedError } from '../../protocol/index.js';
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import type { Logger } from '../../lib/log.js';
import { capInboundPackets, MAX_INBOUND_PACKET_BYTES, oversizePublish, stopReading, type OversizeHead } from './packet-cap.js';
import { brokerAddress } from '../../lib/broker-address.js';

export interface SessionBroker {
  url: string;
  /** PEM of the CA(s) to pin; absent: the system's CAs. */
  ca?: string | Buffer;
  cert?: Buffer;
  key?: Buffer;
  protocolVersion: 4 | 5;
}

export interface BackoffOptions {
  /** First delay, ms (default 1000). */
  minMs?: number;
  /** Cap, ms (default 60000). */
  maxMs?: number;
}

export const DEFAULT_BACKOFF: Required<BackoffOptions> = { minMs: 1000, maxMs: 60_000 };

export interface SessionOptions {
  clientId: string;
  broker: SessionBroker;
  /** The topic subscribed at QoS 1 (the device's command topic). */
  topic: string;
  /**
   * Called for each message, one at a time; the PUBACK is sent when it resolves.
   * When it rejects, no PUBACK is sent (the broker redelivers on the next connection).
   */
  onMessage: (topic: string, payload: Buffer, packet: IPublishPacket) => Promise<void>;
  log: Logger;
  backoff?: BackoffOptions;
  /** MQTT keepalive, s (default 60). */
  keepaliveS?: number;
  /** Connect timeout, ms (default 10000). */
  connectTimeoutMs?: number;
  /**
   * The last will for the connection about to be attempted, asked before every attempt (first
   * connect and each reconnect; mqtt.js reuses `client.options.will` for a reconnect, so it is
   * replaced there each time). Sent QoS 1, not retained. A rejection is logged and that attempt
   * goes without a will.
   */
  will?: () => Promise<SessionWill | undefined>;
  /**
   * A second subscription at QoS 0 (the device's chunk topic: upgrade artifacts), made in the same
   * SUBSCRIBE as `topic`. Its messages go to `onData` at once, outside the one-at-a-time command
   * handling; a broker that refuses it (an ACL without it) only costs upgrades, never commands.
   */
  dataTopic?: string;
  onData?: (payload: Buffer) => void;
}

/** A last will: `payload` is published to `topic` (QoS 1, not retained) if the connection dies without DISCONNECT. */
export interface SessionWill {
  topic: string;
  payload: string;
}

/** Exponential backoff with full jitter: a random delay in [min, min(max, min * 2^attempt)]. */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.round(minMs + random() * Math.max(0, ceiling - minMs));
}

/** A connection attempt that failed, and when the next one is made. */
export interface RetryInfo {
  /** Failed attempts in a row (1 for the first). */
  attempt: number;
  /** Delay before the next attempt, ms. */
  delayMs: number;
  /** Why it failed, short: an error code (ECONNREFUSED, ENOTFOUND, CERT_NOT_YET_VALID...) or message. */
  reason: string;
  /** The session was connected and subscribed until this (a disconnection, not a failed attempt). */
  lost: boolean;
}

export interface MqttSessionEvents {
  /** Connected and the command subscription is granted. */
  subscribed: [];
  connected: [];
  offline: [];
  /** An attempt failed (or a connection was lost) and the next one is scheduled. */
  retrying: [RetryInfo];
}

/** An error's short form for a status line: its code when it is a symbolic one, else its message. */
export function shortReason(err: Error): string {
  const code = (err as { code?: unknown }).code;
  const short = typeof code === 'string' && /^[A-Z][A-Z0-9_]{2,}$/.test(code) ? code : err.message;
  // TLS refuses a valid certificate while the board's clock is still at its epoch (no RTC, NTP not yet synced).
  return /^CERT_NOT_YET_VALID$|^CERT_HAS_EXPIRED$/.test(short) ? `${short} (is the clock set?)` : short;
}

export class MqttSession extends EventEmitter<MqttSessionEvents> {
  #client: MqttClient | undefined;
  #broker: SessionBroker;
  #attempt = 0;
  #timer: NodeJS.Timeout | undefined;
  #stopping = false;
  #subscribed = false;
  #inFlight: Promise<void> = Promise.resolve();
  #lastError = '';
  /** Why the current attempt failed (reset at each attempt). */
  #attemptError = '';
  /** The last oversized command dropped (topic and size) and how many times in a row it came. */
  #oversize: { key: string; count: number } | undefined;
  /** The next attempt connects with a clean session, only to drop what the broker queued for this client. */
  #shed = false;

  constructor(private readonly options: SessionOptions) {
    super();
    this.#broker = options.broker;
  }

  get broker(): SessionBroker {
    return this.#broker;
  }

  /** Connected and subscribed. */
  get ready(): boolean {
    return this.#client?.connected === true && this.#subscribed;
  }

  get lastError(): string {
    return this.#lastError;
  }

  start(): void {
    this.#stopping = false;
    this.#connect();
  }

  /** Publishes at QoS 1 (not retained); resolves on PUBACK. Refused while disconnected (nothing queues offline). */
  async publish(topic: string, payload: string): Promise<void> {
    const client = this.#client;
    if (!client || !client.connected) throw new SessionError('E_OFFLINE', `not connected to ${this.#broker.url}`);
    await client.publishAsync(topic, payload, { qos: 1, retain: false });
  }

  /** Publishes at QoS 0 (fire and forget: upgrade fetch requests). Refused while disconnected. */
  async publishDatagram(topic: string, payload: string): Promise<void> {
    const client = this.#client;
    if (!client || !client.connected || !this.#subscribed) throw new SessionError('E_OFFLINE', `not connected to ${this.#broker.url}`);
    await client.publishAsync(topic, payload, { qos: 0, retain: false });
  }

  /** Resolves true once connected and subscribed, false after `timeoutMs`. */
  waitReady(timeoutMs: number): Promise<boolean> {
    if (this.ready) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (ok: boolean): void => {
        clearTimeout(timer);
        this.off('subscribed', onReady);
        resolve(ok);
      };
      const onReady = (): void => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.on('subscribed', onReady);
    });
  }

  /** Leaves the current broker (cleanly) and connects to `broker` with the same identity. */
  async switchBroker(broker: SessionBroker): Promise<void> {
    await this.#end();
    this.#broker = broker;
    this.#attempt = 0;
    if (!this.#stopping) this.#connect();
  }

  /** Waits for the message in flight (its PUBACK is then sent). */
  async drain(): Promise<void> {
    await this.#inFlight.catch(() => undefined);
  }

  /** Waits for the message in flight, then disconnects cleanly. Idempotent. */
  async stop(): Promise<void> {
    this.#stopping = true;
    await this.#inFlight.catch(() => undefined);
    await this.#end();
  }

  async #end(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const client = this.#client;
    this.#client = undefined;
    this.#subscribed = false;
    if (!client) return;
    client.removeAllListeners('close');
    await Promise.race([client.endAsync(false), new Promise<void>((r) => setTimeout(r, 2000).unref())]).catch(() => undefined);
    if (!client.disconnected) await client.endAsync(true).catch(() => undefined);
  }

  #connect(): void {
    const b = this.#broker;
    this.#attemptError = '';
    const o: IClientOptions = {
      clientId: this.options.clientId,
      clean: false,
      protocolVersion: b.protocolVersion,
      reconnectPeriod: 0,
      queueQoSZero: false,
      // mqtt-packet's write cache is 65,536 pre-built 2-byte Buffers (about 7 MB of heap on a 512 MB board).
      writeCache: false,
      keepalive: this.options.keepaliveS ?? 60,
      connectTimeout: this.options.connectTimeoutMs ?? 10_000,
      resubscribe: false,
      rejectUnauthorized: true,
      ...(b.ca !== undefined ? { ca: b.ca } : {}),
      ...(b.cert !== undefined ? { cert: b.cert } : {}),
      ...(b.key !== undefined ? { key: b.key } : {}),
      ...(b.protocolVersion === 5 ? { properties: { sessionExpiryInterval: 0xffffffff, maximumPacketSize: MAX_INBOUND_PACKET_BYTES } } : {}),
      manualConnect: true, // connect() below, once every stream it builds is size-capped
    };
    const client = mqtt.connect({ ...brokerAddress(b.url), ...o });
    this.#client = client;
    const log = this.options.log;
    // connect() (first time and every reconnect) makes a new stream: size-cap each before data flows.
    const connect = client.connect.bind(client);
    client.connect = () => {
      connect();
      const stream = client.stream;
      capInboundPackets(stream, MAX_INBOUND_PACKET_BYTES, (declared, head) => {
        this.#lastError = `the broker sent an MQTT packet of ${declared} bytes (cap ${MAX_INBOUND_PACKET_BYTES})`;
        log.error('oversized MQTT packet refused before buffering it; connection dropped, reconnecting', {
          broker: b.url,
          declared_bytes: declared,
          cap_bytes: MAX_INBOUND_PACKET_BYTES,
        });
        // Read no more, let the commands already parsed finish (their PUBACKs go out), then drop.
        stopReading(stream);
        const acked = this.#onOversize(stream, declared, head);
        void this.#settled()
          .then(() => acked)
          .then(() => stream.destroy());
      });
      return client;
    };

    client.handleMessage = (packet: IPublishPacket, callback: (err?: Error) => void): void => {
      const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
      if (this.options.dataTopic !== undefined && packet.topic === this.options.dataTopic) {
        try {
          this.options.onData?.(payload);
        } catch (err) {
          log.warn('data message not handled', { reason: err instanceof Error ? err.message : String(err) });
        }
        callback();
        return;
      }
      const work = this.options.onMessage(packet.topic, payload, packet);
      // Chained, not replaced: after a reconnect a message can arrive while one from the previous
      // connection is still in flight, and drain/stop/#settled must wait for both.
      const settled = work.catch(() => undefined);
      this.#inFlight = Promise.all([this.#inFlight, settled]).then(() => undefined);
      work.then(
        () => {
          this.#oversize = undefined; // a command got through: an oversized one seen before is not coming again in a row
          callback();
        },
        (err: unknown) => {
          // No PUBACK: the broker redelivers it on the next connection.
          log.error('command not acknowledged to the broker; it will be redelivered', { reason: err instanceof Error ? err.message : String(err) });
          this.#dropConnection(client);
        },
      );
    };

    client.on('connect', (connack) => {
      if (client !== this.#client) return;
      // Commands and acks are single small packets: do not let Nagle hold them back.
      const socket = client.stream as { setNoDelay?: (on: boolean) => unknown };
      socket.setNoDelay?.(true);
      this.#attempt = 0;
      this.#lastError = '';
      if (client.options.clean === true) {
        // The clean session was only to drop the broker's queue: back to the persistent one at once.
        log.warn(
          'session.shed: connected once with a clean session, so the broker dropped what it queued for this board; reconnecting with the persistent session',
          {
            broker: b.url,
          },
        );
        client.options.clean = false;
        this.#dropConnection(client);
        return;
      }
      log.info('connected to broker', { broker: b.url, session_present: connack.sessionPresent });
      this.emit('connected');
      client.subscribe(this.options.topic, { qos: 1 }, (err, granted) => {
        if (client !== this.#client) return;
        const g = granted?.[0];
        if (err && (client.stream.destroyed || !client.connected)) {
          // The connection ended before the SUBACK (an oversized packet, a broker restart): not a refusal.
          log.warn('connection lost before the subscription was confirmed', { topic: this.options.topic, reason: this.#lastError || err.message });
          return;
        }
        if (err || !g || (g.qos !== 1 && g.qos !== 0)) {
          this.#lastError = err ? err.message : `subscription to ${this.options.topic} refused (code ${String(g?.qos)})`;
          this.#attemptError = `subscription refused: ${this.#lastError}`;
          log.error('subscription refused; check the broker ACL for this device', { topic: this.options.topic, reason: this.#lastError });
          this.#dropConnection(client);
          return;
        }
        if (g.qos === 0) log.warn('broker granted QoS 0 only for the command topic', { topic: this.options.topic });
        const ready = (): void => {
          this.#subscribed = true;
          // The stream got past what the broker re-sent at the reconnect: an oversized packet from now on is a new one.
          this.#oversize = undefined;
          log.info('subscribed', { topic: this.options.topic });
          this.emit('subscribed');
        };
        const data = this.options.dataTopic;
        if (data === undefined) return ready();
        // Then the data topic: its refusal (an ACL without it) costs upgrades only, never commands.
        client.subscribe(data, { qos: 0 }, (dataErr, dataGranted) => {
          if (client !== this.#client || !client.connected) return;
          const q = dataGranted?.[0]?.qos;
          if (dataErr || (q !== 0 && q !== 1)) {
            log.warn('subscription to the chunk topic refused: upgrades cannot download over MQTT; check the broker ACL for this device', {
              topic: data,
              reason: dataErr?.message ?? `code ${String(q)}`,
            });
          }
          ready();
        });
      });
    });
    client.on('error', (err) => {
      if (client !== this.#client) return;
      if (client.options.protocolVersion === 5 && (err as Error & { code?: unknown }).code === 1) {
        // CONNACK 1, "unacceptable protocol version": a broker that speaks MQTT 3.1.1 only (mosquitto
        // before 1.6, aedes). The next attempts use 3.1.1; the agent's own packet cap still holds.
        client.options.protocolVersion = 4;
        delete client.options.properties;
        log.warn('the broker does not speak MQTT 5: using MQTT 3.1.1 (set broker.protocol_version to 4 in the config to skip this try)', {
          broker: b.url,
        });
      }
      if (err.message !== this.#lastError) log.warn('broker connection error', { broker: b.url, reason: err.message });
      this.#lastError = err.message;
      this.#attemptError = shortReason(err);
    });
    client.on('close', () => {
      if (client !== this.#client || this.#stopping) return;
      const wasReady = this.#subscribed;
      this.#subscribed = false;
      if (wasReady) {
        log.warn('disconnected from broker', { broker: b.url });
        this.emit('offline');
      }
      this.#scheduleReconnect(client, wasReady);
    });
    void this.#setWill(client).then(() => {
      if (client === this.#client && !this.#stopping) client.connect();
    });
  }

  /** Seals the will for the attempt about to be made into the options mqtt.js builds CONNECT from. */
  async #setWill(client: MqttClient): Promise<void> {
    const make = this.options.will;
    if (!make) return;
    try {
      const w = await make();
      client.options.will = w ? { topic: w.topic, payload: Buffer.from(w.payload), qos: 1, retain: false } : undefined;
    } catch (err) {
      client.options.will = undefined;
      this.options.log.warn('last will not sealed; connecting without one', { reason: err instanceof Error ? err.message : String(err) });
    }
  }

  /**
   * An oversized packet was refused unread. A PUBLISH (on the command topic: the only subscription)
   * is logged as a command that may have been lost; at QoS 1 with its packet id in the bytes read it
   * is acknowledged (PUBACK), so the broker does not send it again at every reconnect (a persistent
   * session, a broker without max_packet_size, MQTT 3.1.1: the agent could not announce its Maximum
   * Packet Size). A QoS 0 one is never sent again by the broker: it only costs a reconnect, and two
   * of them in a row (two messages, not one redelivered) never shed the session. When the same QoS 1
   * packet (its type, QoS, size and packet id) comes back anyway (twice in a row when its id was not
   * in the bytes read, three times when the PUBACK did not take), the next connection is made once
   * with a clean session, which drops the broker's queue for this board. Resolves once a PUBACK is
   * written.
   */
  #onOversize(stream: Duplex, declared: number, head: OversizeHead): Promise<void> {
    const isPublish = head.first >> 4 === 3;
    const pub = isPublish ? oversizePublish(head) : undefined;
    const qos = isPublish ? (head.first >> 1) & 3 : undefined;
    let count = 1;
    if (qos !== 0) {
      // A redelivery repeats type, QoS, size and packet id (its DUP flag may differ).
      const key = `${head.first >> 4} ${qos ?? '-'} ${declared} ${pub?.packetId ?? '?'}`;
      count = this.#oversize?.key === key ? this.#oversize.count + 1 : 1;
      this.#oversize = { key, count };
      if (count >= (pub?.packetId === undefined ? 2 : 3)) this.#shed = true;
    }
    const ack = pub !== undefined && pub.topic === this.options.topic && pub.qos === 1 && pub.packetId !== undefined;
    const next = this.#shed
      ? 'it came again: the next connection uses a clean session once, which also drops any other message the broker queued for this board'
      : ack
        ? 'acknowledged to the broker so it is not sent again'
        : qos === 0
          ? 'sent at QoS 0, the broker does not send it again'
          : 'the broker may send it again';
    if (!isPublish) {
      if (this.#shed) this.options.log.error('the same oversized packet came again', { bytes: declared, limit_bytes: MAX_INBOUND_PACKET_BYTES, detail: next });
      return Promise.resolve();
    }
    this.options.log.error('command.oversize_dropped', {
      topic: pub?.topic ?? this.options.topic,
      bytes: declared,
      limit_bytes: MAX_INBOUND_PACKET_BYTES,
      ...(pub !== undefined ? { qos: pub.qos } : {}),
      ...(pub?.packetId !== undefined ? { packet_id: pub.packetId } : {}),
      times: count,
      detail: `a message larger than the agent reads was dropped unread, so a command may have been lost (the server sees it unanswered); ${next}`,
    });
    if (!ack) return Promise.resolve();
    const id = pub.packetId ?? 0;
    return new Promise((resolve) => {
      // PUBACK: type 4, remaining length 2, the packet id. The broker reads it before the connection is dropped.
      stream.write(Buffer.from([0x40, 0x02, id >> 8, id & 0xff]), () => setTimeout(resolve, PUBACK_GRACE_MS).unref());
    });
  }

  /** Resolves once the message in flight is done and no next one started. */
  async #settled(): Promise<void> {
    for (;;) {
      const current = this.#inFlight;
      await current;
      await new Promise((r) => setImmediate(r));
      if (current === this.#inFlight) return;
    }
  }

  /**
   * Closes the network connection only. `client.end()` would also close the
   * client's in-memory stores, which the reconnect reuses (mqtt.js then
   * crashes on the next CONNACK); destroying the stream ends in `close`,
   * which schedules the reconnect with backoff as for any other loss.
   */
  #dropConnection(client: MqttClient): void {
    if (client !== this.#client) return;
    this.#subscribed = false;
    client.stream?.destroy();
  }

  #scheduleReconnect(client: MqttClient, lost: boolean): void {
    if (this.#timer) return;
    const delay = backoffDelay(this.#attempt, this.options.backoff?.minMs ?? DEFAULT_BACKOFF.minMs, this.options.backoff?.maxMs ?? DEFAULT_BACKOFF.maxMs);
    this.#attempt += 1;
    this.options.log.debug('reconnecting', { in_ms: delay, attempt: this.#attempt });
    this.emit('retrying', { attempt: this.#attempt, delayMs: delay, reason: this.#attemptError || 'connection closed', lost });
    const timer: NodeJS.Timeout = setTimeout(() => {
      const done = (): void => {
        if (this.#timer === timer) this.#timer = undefined;
      };
      if (client !== this.#client || this.#stopping) return done();
      this.#attemptError = '';
      // #timer stays set while the will is sealed: no second reconnect is scheduled meanwhile.
      void this.#setWill(client).then(() => {
        done();
        if (client !== this.#client || this.#stopping) return;
        if (this.#shed) {
          this.#shed = false;
          this.#oversize = undefined;
          client.options.clean = true;
          client.options.will = undefined; // this connection is dropped at once: no offline report for it
        }
        // Same stores: QoS 1 acks in flight are resent after the reconnect.
        client.reconnect({ incomingStore: client.incomingStore, outgoingStore: client.outgoingStore });
      });
    }, delay);
    this.#timer = timer;
  }
}

/** How long the connection stays up after the PUBACK of an oversized command is written (the broker must read it first). */
const PUBACK_GRACE_MS = 200;

export class SessionError extends CodedError<'E_OFFLINE'> {
  override readonly name = 'SessionError';
}
