/**
 * The short-lived MQTT session of `send`: publishes commands and, for `--wait`
 * and fan-outs, subscribes to the acks of the devices concerned, verifying and
 * recording them itself (idempotently: a running `serve` may record the same
 * ack; either way the waiter sees it).
 */
import type { MqttClient } from 'mqtt';
import { ackTopic, fleetFilter, type ReportClaims } from '../../protocol/index.js';
import { AckWaiters } from './ack-waiters.js';
import { CommandSender } from './command-sender.js';
import type { BrokerSettings, OpenedData } from '../data-dir.js';
import { handleInbound } from './inbound.js';
import { silentLogger, type Logger } from '../../lib/log.js';
import { connectBroker, publishQos1 } from './mqtt-connection.js';
import { SealPool } from './seal-pool.js';

export interface SendClient {
  client: MqttClient;
  sender: CommandSender;
  waiters: AckWaiters;
  close(): Promise<void>;
}

/** Connects; `acksOf` is the device ids whose acks to follow, or 'all'. */
export async function openSendClient(
  data: OpenedData,
  broker: BrokerSettings,
  options: {
    acksOf: string[] | 'all';
    log?: Logger;
    connectTimeoutMs?: number;
    sealWorkers?: number;
    /** Also take every device's reports (presence), and be told of each recorded: a rollout driven by this process. */
    onReport?: (deviceId: string, claims: ReportClaims) => void;
  },
): Promise<SendClient> {
  const log = options.log ?? silentLogger;
  const client = await connectBroker(broker, { clean: true, ...(options.connectTimeoutMs ? { connectTimeoutMs: options.connectTimeoutMs } : {}) });
  const { storage, keys, config } = data;
  const pool = options.sealWorkers ? SealPool.start(options.sealWorkers) : undefined;
  const sender = new CommandSender({
    storage,
    keys,
    topicPrefix: config.topicPrefix,
    publish: (t, p) => publishQos1(client, t, p),
    ...(pool ? { seal: pool.seal } : {}),
  });
  const waiters = new AckWaiters(storage, { log });
  const ctx = {
    storage,
    keys,
    topicPrefix: config.topicPrefix,
    sender,
    log,
    onAck: (c: Parameters<AckWaiters['notify']>[0]) => waiters.notify(c),
    ...(options.onReport ? { onReport: options.onReport } : {}),
  };
  client.on('message', (topic, payload) => {
    void handleInbound(ctx, topic, payload);
  });
  if (options.onReport) await client.subscribeAsync(fleetFilter(config.topicPrefix, 'report'), { qos: 1 });
  if (options.acksOf === 'all') await client.subscribeAsync(fleetFilter(config.topicPrefix, 'ack'), { qos: 1 });
  else if (options.acksOf.length > 0)
    await client.subscribeAsync(
      options.acksOf.map((id) => ackTopic(config.topicPrefix, id)),
      { qos: 1 },
    );
  return {
    client,
    sender,
    waiters,
    close: async () => {
      waiters.cancelAll();
      await client.endAsync().catch(() => undefined);
      await pool?.close();
    },
  };
}
