/** The server's MQTT session: TLS with a pinned CA and optional client certificate, QoS 1 publishing. */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { CodedError } from '../../protocol/index.js';
import type { BrokerSettings } from '../data-dir.js';
import { brokerAddress } from '../../lib/broker-address.js';

export interface ConnectOptions {
  clientId?: string;
  /** false: a persistent session (the broker queues QoS 1 messages while we are away). */
  clean?: boolean;
  /** Give up on the first connection after this long (later reconnects go on in the background). */
  connectTimeoutMs?: number;
  /**
   * Handles every incoming QoS 1 message, the PUBACK going out when it calls back (mqtt.js
   * takes the next packet only then). Set before the CONNECT: a persistent session's queued
   * messages arrive right after the CONNACK, and mqtt.js's default handler would PUBACK them
   * unhandled.
   */
  handleMessage?: MqttClient['handleMessage'];
}

export class BrokerError extends CodedError<'E_BROKER'> {
  override readonly name = 'BrokerError';
  constructor(message: string, options?: { cause?: unknown }) {
    super('E_BROKER', message, options);
  }
}

/** Connects and resolves once the broker accepted the session; rejects (E_BROKER) if it does not within the timeout. */
export async function connectBroker(settings: BrokerSettings, options: ConnectOptions = {}): Promise<MqttClient> {
  const url = new URL(settings.url);
  if (url.protocol !== 'mqtt:' && url.protocol !== 'mqtts:') throw new CodedError('E_USAGE', `broker URL ${settings.url} must be mqtt:// or mqtts://`);
  const opts: IClientOptions = {
    clientId: options.clientId ?? `provision-server-${randomBytes(6).toString('hex')}`,
    clean: options.clean ?? true,
    protocolVersion: 4,
    reconnectPeriod: 2000,
    connectTimeout: options.connectTimeoutMs ?? 10_000,
    resubscribe: true,
    queueQoSZero: false,
  };
  if (url.protocol === 'mqtts:') {
    if (settings.ca) opts.ca = await readPem(settings.ca, 'broker CA');
    if (settings.cert) opts.cert = await readPem(settings.cert, 'client certificate');
    if (settings.key) opts.key = await readPem(settings.key, 'client key');
    opts.rejectUnauthorized = true;
  } else if (settings.cert || settings.key) {
    throw new CodedError('E_USAGE', 'a client certificate needs an mqtts:// broker URL');
  }
  const client = mqtt.connect({ ...brokerAddress(settings.url), ...opts });
  if (options.handleMessage) client.handleMessage = options.handleMessage;
  // Commands and acks are single small packets: do not let Nagle hold them back (every reconnect).
  client.on('connect', () => (client.stream as { setNoDelay?: (on: boolean) => unknown }).setNoDelay?.(true));
  const timeoutMs = options.connectTimeoutMs ?? 10_000;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => fail(new BrokerError(`could not connect to ${settings.url} within ${timeoutMs} ms${lastError ? `: ${lastError.message}` : ''}`)),
      timeoutMs,
    );
    let lastError: Error | undefined;
    const onError = (err: Error): void => {
      lastError = err;
      // Authentication and TLS failures will not heal by retrying.
      if (/not authorized|bad user|certificate|self.signed|handshake|unable to verify/i.test(err.message)) {
        fail(new BrokerError(`broker ${settings.url} refused the connection: ${err.message}`));
      }
    };
    const onConnect = (): void => {
      clearTimeout(timer);
      client.off('error', onError);
      resolve();
    };
    function fail(err: Error): void {
      clearTimeout(timer);
      client.off('error', onError);
      client.off('connect', onConnect);
      client.end(true);
      reject(err);
    }
    client.once('connect', onConnect);
    client.on('error', onError);
  });
  client.on('error', () => undefined); // later errors: mqtt.js reconnects on its own
  return client;
}

/** Publishes at QoS 1, never retained; resolves on PUBACK. */
export async function publishQos1(client: MqttClient, topic: string, payload: string): Promise<void> {
  await client.publishAsync(topic, payload, { qos: 1, retain: false });
}

async function readPem(path: string, what: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    throw new CodedError('E_NO_FILE', `cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}
