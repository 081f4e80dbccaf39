/**
 * THE way an MQTT session of the server takes messages (serve's ack,
 * enrollment and report sessions, `send`'s short-lived one): mqtt.js's
 * `handleMessage(packet, callback)`, where the callback sends the PUBACK. Each
 * message is handled first and acknowledged after: a crash or a failure
 * mid-way means the broker delivers it again, and handling is idempotent.
 * The steps: handle -> (a transient failure: `retry`) -> acknowledge.
 */
import type { MqttClient } from 'mqtt';
import type { InboundResult } from './inbound.js';

/** Handles one message once (never throws: refusals and storage errors are results). */
export type HandleOnce = (topic: string, payload: Buffer) => Promise<InboundResult>;

export interface AckAfterHandlingOptions {
  /** Told of each message's final result, before it is acknowledged (tests, demo). */
  onResult?: (result: InboundResult) => void;
  /**
   * Handles a message again whose handling failed transiently (e.g. the
   * storage was unreachable), before it is acknowledged. Default: no retry.
   * Undefined (the server stopped while it waited): the message is not
   * acknowledged, so the broker delivers it again.
   */
  retry?: (attempt: () => Promise<InboundResult>) => Promise<InboundResult | undefined>;
}

/** mqtt.js `handleMessage`: `handle`, then (retried as `retry` says) acknowledge. */
export function ackAfterHandling(handle: HandleOnce, options: AckAfterHandlingOptions = {}): MqttClient['handleMessage'] {
  return (packet, callback) => {
    const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : Buffer.from(packet.payload);
    const attempt = (): Promise<InboundResult> => handle(packet.topic, payload);
    void (options.retry ? options.retry(attempt) : attempt())
      .then((result) => {
        if (result === undefined) return; // stopped first: not acknowledged, delivered again
        options.onResult?.(result);
        callback();
      })
      .catch(() => callback());
  };
}
