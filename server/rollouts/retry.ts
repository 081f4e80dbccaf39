/**
 * Retrying a rollout for the targets that did not apply (rollout retry, POST
 * /rollouts/{id}/retry): a new rollout with the same action, params, user,
 * lifetimes, rate, ramp, abort rule and concurrency, over the targets that
 * ended rejected, failed, expired, cancelled or not sent, with a new deadline
 * (the one given, else the original's duration from now), recorded as a retry
 * of the original. Targets still in flight are left out (their command may
 * still apply); a rollout still running or paused is refused (cancel it first).
 */
import { RegistryError } from '../registry/errors.js';
import type { Registry } from '../registry/registry.js';
import { RolloutStore, type RolloutRecord, type TargetState } from '../registry/rollouts.js';
import type { ServerKeys } from '../server-keys.js';
import { planRollout, startRollout, type RolloutPlan } from './plan.js';

/** The target states a retry sends to again. */
export const RETRIED_STATES: readonly TargetState[] = ['rejected', 'failed', 'expired', 'cancelled', 'not sent'];

export interface RetryPlan {
  original: RolloutRecord;
  plan: RolloutPlan;
  /** Targets of the original still in flight (sent, unanswered): not retried. */
  inFlight: number;
}

export async function planRetry(registry: Registry, keys: ServerKeys, id: string, options: { deliverWithinMs?: number } = {}): Promise<RetryPlan> {
  const store = new RolloutStore(registry);
  const original = store.require(id);
  if (original.finishedAt === null && (original.state === 'running' || original.state === 'paused')) {
    throw new RegistryError(
      'E_ROLLOUT_STATE',
      `rollout ${id} is ${original.state}: it may still deliver to its targets; cancel it first (rollout cancel ${id}), then retry`,
    );
  }
  const counts = store.counts(id);
  const ids = store.targets(id, { states: RETRIED_STATES }).map((t) => t.deviceId);
  const inFlight = counts.sending + counts.sent;
  if (ids.length === 0) {
    throw new RegistryError(
      'E_ROLLOUT_STATE',
      `rollout ${id}: nothing to retry (${counts.applied} applied${inFlight ? `, ${inFlight} still in flight` : ''}; no target rejected, failed, expired or not sent)`,
    );
  }
  const plan = await planRollout(registry, keys, {
    action: original.action,
    params: original.params,
    ...(original.userId !== undefined ? { userId: original.userId } : {}),
    selector: { devices: ids },
    ttlSeconds: original.ttlSeconds,
    deliverWithinMs: options.deliverWithinMs ?? Math.max(1000, original.deadlineAt - original.createdAt),
    ...(original.ratePerMin !== undefined ? { ratePerMin: original.ratePerMin } : {}),
    ...(original.rampFrom !== undefined ? { rampFrom: original.rampFrom, rampFactor: original.rampFactor ?? 2 } : {}),
    ...(original.abortPercent !== undefined ? { abortPercent: original.abortPercent } : {}),
    abortMin: original.abortMin,
    concurrency: original.concurrency,
  });
  return { original, plan, inFlight };
}

/** Records the retry: the new rollout with its origin, and the audit row naming both, written with the rollout's own. */
export function startRetry(registry: Registry, rp: RetryPlan): Promise<RolloutRecord> {
  return startRollout(registry, rp.plan, { retryOf: { id: rp.original.id, inFlightLeftOut: rp.inFlight } });
}
