/**
 * Fleet subscriptions of `serve`: `$share/GROUP/{prefix}/+/ack`, `.../enroll`, `.../report` and `.../fetch` (release transfers, QoS 0)
 * where the broker supports MQTT shared subscriptions (mosquitto >= 1.6 does, also
 * over MQTT 3.1.1), so that several `serve` instances split the fleet's messages
 * and none handles an ack twice. MQTT 3.1.1 has no way to ask a broker whether it
 * supports them, so `auto` probes: it subscribes to a shared probe topic and
 * publishes to it ({prefix}/_server/shared-probe-RANDOM: a broker ACL must let the
 * server's identity read and write {prefix}/_server/#); no delivery within the probe
 * time means no support (aedes 1.x), and it falls back to plain subscriptions (only
 * one instance should then run; recording an ack is idempotent in the registry
 * either way). `--shared on` skips the probe.
 */
import { randomBytes } from 'node:crypto';
import type { MqttClient } from 'mqtt';
import { fleetFilter } from '../../protocol/index.js';
import { BrokerError } from './mqtt-connection.js';
import type { Logger } from '../../lib/log.js';

export type SharedMode = 'auto' | 'on' | 'off';
export const DEFAULT_SHARE_GROUP = 'provision-server';

export async function subscribeFleet(
  client: MqttClient,
  prefix: string,
  options: { mode: SharedMode; group?: string; probeMs?: number; log: Logger; kinds?: readonly ('ack' | 'enroll' | 'report' | 'fetch')[]; qos?: 0 | 1 },
): Promise<{ shared: boolean; filters: string[] }> {
  const group = options.group ?? DEFAULT_SHARE_GROUP;
  let shared = options.mode === 'on';
  if (options.mode === 'auto') shared = await probeShared(client, prefix, group, options.probeMs ?? 2500);
  const plain = (options.kinds ?? ['ack', 'enroll']).map((kind) => fleetFilter(prefix, kind));
  const filters = shared ? plain.map((f) => `$share/${group}/${f}`) : plain;
  const granted = await client.subscribeAsync(filters, { qos: options.qos ?? 1 });
  const refused = granted.filter((g) => g.qos === 128);
  if (refused.length) throw new BrokerError(`the broker refused the subscription(s) ${refused.map((g) => g.topic).join(', ')}`);
  if (shared) options.log.info('subscribe.shared', { group, filters });
  else options.log.warn('subscribe.plain', { filters, note: 'no shared subscriptions: run only one serve instance on this broker' });
  return { shared, filters };
}

/**
 * Drops a subscription a persistent session may still hold from an earlier
 * version (one session used to take acks, enrollments and reports): plain and shared forms.
 */
export async function unsubscribeFleet(client: MqttClient, prefix: string, kind: 'ack' | 'enroll' | 'report', group = DEFAULT_SHARE_GROUP): Promise<void> {
  const plain = fleetFilter(prefix, kind);
  await client.unsubscribeAsync([plain, `$share/${group}/${plain}`]);
}

async function probeShared(client: MqttClient, prefix: string, group: string, probeMs: number): Promise<boolean> {
  // `_server` is not a valid device id, so no device topic can ever collide with it.
  // With a broker ACL, the server's identity needs `topic readwrite {prefix}/_server/#`.
  const topic = `${prefix}/_server/shared-probe-${randomBytes(6).toString('hex')}`;
  const filter = `$share/${group}-probe/${topic}`;
  try {
    const granted = await client.subscribeAsync(filter, { qos: 1 });
    if (granted.some((g) => g.qos === 128)) return false;
  } catch {
    return false;
  }
  const received = new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => finish(false), probeMs);
    const onMessage = (t: string): void => {
      if (t === topic) finish(true);
    };
    function finish(ok: boolean): void {
      clearTimeout(timer);
      client.off('message', onMessage);
      resolve(ok);
    }
    client.on('message', onMessage);
  });
  await client.publishAsync(topic, 'probe', { qos: 1, retain: false });
  const ok = await received;
  await client.unsubscribeAsync(filter).catch(() => undefined);
  return ok;
}
