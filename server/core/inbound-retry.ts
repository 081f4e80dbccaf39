/**
 * An inbound message whose handling failed because the registry could not be
 * reached (E_STORAGE_UNAVAILABLE: a lost PostgreSQL connection) is handled
 * again, after 0.5 s, then 1, 2, 4, 5, 5 ... s, until it is handled or the
 * server stops; only then is it PUBACKed. Dropping it would lose it for good
 * (an ack never recorded keeps its rollout target `sent` and fills the
 * rollout's in-flight window), and MQTT redelivers an un-PUBACKed message
 * only when the session reconnects. Handling is idempotent (an ack recorded
 * by a try whose answer was lost is a duplicate the next time). While it
 * waits, the session takes no further message (mqtt.js hands the next one over
 * after the callback): the broker holds them.
 */
import type { InboundResult } from './inbound.js';

const STORAGE_UNAVAILABLE = 'E_STORAGE_UNAVAILABLE';
const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 5_000;

/** Runs `handle` until its result is not a storage failure; undefined when `stopped()` turned true meanwhile (not to be PUBACKed). */
export async function handleUntilStored(
  handle: () => Promise<InboundResult>,
  stopped: () => boolean,
  sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms).unref()),
): Promise<InboundResult | undefined> {
  let delay = FIRST_DELAY_MS;
  for (;;) {
    const result = await handle();
    if (result.kind !== 'dropped' || result.code !== STORAGE_UNAVAILABLE) return result;
    if (stopped()) return undefined;
    await sleep(delay);
    if (stopped()) return undefined;
    delay = Math.min(delay * 2, MAX_DELAY_MS);
  }
}
