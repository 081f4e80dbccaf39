/**
 * The short-lived MQTT session of `send` (one command, a fan-out, a rollout
 * driven by the CLI): a ServerCore on a clean session that publishes commands
 * and, for `--wait`, fan-outs and rollouts, takes the acks of the devices
 * concerned (and, for a rollout, every report), handling each before it is
 * acknowledged, as serve does (ack-after-handling.ts). Recording is idempotent:
 * a running `serve` may record the same ack; either way the waiter sees it.
 */
import type { MqttClient } from 'mqtt';
import { ackTopic, fleetFilter } from '../../protocol/index.js';
import type { BrokerSettings, OpenedData } from '../data-dir.js';
import type { Logger } from '../../lib/log.js';
import type { AckWaiters } from './ack-waiters.js';
import type { CommandSender } from './command-sender.js';
import { connectBroker } from './mqtt-connection.js';
import { SealPool } from './seal-pool.js';
import { ServerCore, type InboundHooks } from './server-core.js';

export interface SendSession {
  core: ServerCore;
  client: MqttClient;
  sender: CommandSender;
  waiters: AckWaiters;
  close(): Promise<void>;
}

/** Connects; `acksOf` is the device ids whose acks to follow, or 'all'. */
export async function openSendSession(
  data: OpenedData,
  broker: BrokerSettings,
  options: {
    acksOf: string[] | 'all';
    log?: Logger;
    connectTimeoutMs?: number;
    sealWorkers?: number;
    /** Also take every device's reports (presence), and be told of each recorded: a rollout driven by this process. */
    onReport?: InboundHooks['onReport'];
    /** Told of every ack recorded (a rollout driven by this process). */
    onAck?: InboundHooks['onAck'];
  },
): Promise<SendSession> {
  const { storage, keys, config } = data;
  const pool = options.sealWorkers ? SealPool.start(options.sealWorkers) : undefined;
  const core = new ServerCore({
    storage,
    keys,
    topicPrefix: config.topicPrefix,
    ...(options.log ? { log: options.log } : {}),
    ...(pool ? { seal: pool.seal } : {}),
  });
  const hooks: InboundHooks = {};
  if (options.onReport) hooks.onReport = options.onReport;
  if (options.onAck) hooks.onAck = options.onAck;
  core.start(hooks);
  let client: MqttClient;
  try {
    client = await connectBroker(broker, {
      clean: true,
      handleMessage: core.handleMessage,
      ...(options.connectTimeoutMs ? { connectTimeoutMs: options.connectTimeoutMs } : {}),
    });
  } catch (err) {
    await pool?.close();
    throw err;
  }
  core.publishOn(client);
  const subscribe = async (): Promise<void> => {
    if (options.onReport) await client.subscribeAsync(fleetFilter(config.topicPrefix, 'report'), { qos: 1 });
    if (options.acksOf === 'all') await client.subscribeAsync(fleetFilter(config.topicPrefix, 'ack'), { qos: 1 });
    else if (options.acksOf.length > 0)
      await client.subscribeAsync(
        options.acksOf.map((id) => ackTopic(config.topicPrefix, id)),
        { qos: 1 },
      );
  };
  const close = async (): Promise<void> => {
    core.close();
    await client.endAsync().catch(() => undefined);
    await pool?.close();
  };
  try {
    await subscribe();
  } catch (err) {
    await close();
    throw err;
  }
  return { core, client, sender: core.sender, waiters: core.waiters, close };
}
