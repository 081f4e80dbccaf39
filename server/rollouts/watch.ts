/**
 * Following a rollout from the CLI until there is nothing more to wait for:
 * it finished, or every command sent has had `ackTimeoutMs` to be answered and
 * what is left waits for boards that are offline (or the rollout is paused or
 * aborted). What is left stays in the registry for the engine.
 */
import type { RolloutRecord, TargetCounts } from '../storage/records.js';
import type { RolloutStore } from '../storage/types.js';
import { progressOf } from './rollout-views.js';

export interface WatchOptions {
  ackTimeoutMs: number;
  pollMs?: number;
  now?: () => number;
  onProgress?: (done: number, total: number, counts: TargetCounts) => void;
  /** Resolves the watch early (SIGINT): what is left stays with the engine. */
  signal?: AbortSignal;
}

export async function watchRollout(store: RolloutStore, id: string, options: WatchOptions): Promise<{ rollout: RolloutRecord; counts: TargetCounts }> {
  const now = options.now ?? Date.now;
  const pollMs = options.pollMs ?? 250;
  for (;;) {
    const r = await store.require(id);
    const counts = await store.counts(id);
    const { done, total } = progressOf(counts);
    options.onProgress?.(done, total, counts);
    if (r.finishedAt !== null || options.signal?.aborted) return { rollout: r, counts };
    const t = now();
    const unanswered = await store.targets(id, { states: ['sent'] });
    const sentSettled = counts.sending === 0 && unanswered.every((u) => (u.sentAt ?? t) + options.ackTimeoutMs <= t);
    const moreToSend = r.state === 'running' && (await store.deliverable(id, t, 1)).length > 0;
    if (sentSettled && !moreToSend) return { rollout: r, counts };
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}
