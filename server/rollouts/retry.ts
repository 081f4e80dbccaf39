/**
 * Retrying a rollout for the targets that did not apply (rollout retry, POST
 * /rollouts/{id}/retry): a new rollout with the same action, params, user,
 * lifetimes, rate, ramp, abort rule and concurrency, over the targets that
 * ended rejected, failed, rolled back, expired, cancelled or not sent, with a new deadline
 * (the one given, else the original's duration from now), recorded as a retry
 * of the original. Targets still in flight are left out (their command may
 * still apply); a rollout still running or paused is refused (cancel it first).
 * The new rollout's selector is `{retryOf, states}`, resolved in SQL: no list
 * of device ids is loaded, stored, audited or re-read at each engine step, and
 * a device removed from the registry since drops out (counted: `removed`).
 */
import { RegistryError } from '../storage/errors.js';
import type { RolloutRecord, TargetState } from '../storage/records.js';
import type { Storage } from '../storage/types.js';
import type { ServerKeys } from '../keys/server-keys.js';
import { planRollout, startRollout, type RolloutPlan } from './plan.js';

/** The target states a retry sends to again. */
export const RETRIED_STATES: readonly TargetState[] = ['rejected', 'failed', 'rolled_back', 'expired', 'cancelled', 'not sent'];

export interface RetryPlan {
  original: RolloutRecord;
  plan: RolloutPlan;
  /** Targets of the original still in flight (sent, unanswered): not retried. */
  inFlight: number;
  /** Targets that did not apply whose device was removed from the registry since: left out. */
  removed: number;
}

export async function planRetry(storage: Storage, keys: ServerKeys, id: string, options: { deliverWithinMs?: number } = {}): Promise<RetryPlan> {
  const original = await storage.rollouts.require(id);
  if (original.finishedAt === null && (original.state === 'running' || original.state === 'paused')) {
    throw new RegistryError(
      'E_ROLLOUT_STATE',
      `rollout ${id} is ${original.state}: it may still deliver to its targets; cancel it first (rollout cancel ${id}), then retry`,
    );
  }
  // Counted, never listed: the new rollout's selector names the original and the states (resolved in SQL).
  const counts = await storage.rollouts.counts(id);
  const retried = RETRIED_STATES.reduce((n, s) => n + counts[s], 0);
  const inFlight = counts.sending + counts.sent;
  if (retried === 0) {
    throw new RegistryError(
      'E_ROLLOUT_STATE',
      `rollout ${id}: nothing to retry (${counts.applied} applied${inFlight ? `, ${inFlight} still in flight` : ''}; no target rejected, failed, rolled back, expired or not sent)`,
    );
  }
  // Devices removed from the registry since drop out of the retry (not an error for the others).
  const removed = await storage.rollouts.removedTargets(id, RETRIED_STATES);
  if (removed === retried) {
    throw new RegistryError('E_ROLLOUT_STATE', `rollout ${id}: nothing to retry (the ${removed} device(s) that did not apply were removed from the registry)`);
  }
  const plan = await planRollout(storage, keys, {
    action: original.action,
    params: original.params,
    ...(original.userId !== undefined ? { userId: original.userId } : {}),
    selector: { retryOf: id, states: [...RETRIED_STATES] },
    ttlSeconds: original.ttlSeconds,
    deliverWithinMs: options.deliverWithinMs ?? Math.max(1000, original.deadlineAt - original.createdAt),
    ...(original.ratePerMin !== undefined ? { ratePerMin: original.ratePerMin } : {}),
    ...(original.rampFrom !== undefined ? { rampFrom: original.rampFrom, rampFactor: original.rampFactor ?? 2 } : {}),
    ...(original.abortPercent !== undefined ? { abortPercent: original.abortPercent } : {}),
    abortMin: original.abortMin,
    concurrency: original.concurrency,
  });
  return { original, plan, inFlight, removed };
}

/** Records the retry: the new rollout with its origin, and the audit row naming both, written with the rollout's own. */
/** `by`: who asked (the audit rows name them). */
export function startRetry(storage: Storage, rp: RetryPlan, by?: string): Promise<RolloutRecord> {
  return startRollout(storage, rp.plan, {
    retryOf: { id: rp.original.id, inFlightLeftOut: rp.inFlight, removedLeftOut: rp.removed },
    ...(by !== undefined ? { by } : {}),
  });
}

/** What a retry's dry run and its response add to the plan (the HTTP API and the CLI's --json alike). */
export function retryView(rp: RetryPlan): { retry_of: string; in_flight_left_out: number; removed_left_out: number } {
  return { retry_of: rp.original.id, in_flight_left_out: rp.inFlight, removed_left_out: rp.removed };
}
