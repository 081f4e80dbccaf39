/**
 * Planning a rollout: the request checked in full (action, params, rate, ramp,
 * abort rule, lifetimes), the targets its selector matches counted by presence,
 * and a bounded sample of them (the first PLAN_SAMPLE by id) with, per device,
 * whether a command to it checks. A dry run prints the plan; starting records
 * it. Neither seals, publishes nor takes a seq.
 *
 * The selector is resolved inside the storage, in counting and in recording
 * the targets (storage.rollouts.summarize, createFromSelector): no list of the
 * fleet is held in memory, and a rollout to 100,000 devices does not hold up
 * the event loop for seconds.
 */
import { type Action, ACTIONS, CodedError, DEFAULT_COMMAND_TTL_SECONDS, isAction, isRecord, MAX_TTL_SECONDS, validateParams } from '../../protocol/index.js';
import { prepareCommand, userIdText } from '../core/command-sender.js';
import { presenceOf, type Presence } from '../core/presence.js';
import type { RolloutRecord, RolloutSelector, RolloutSpec } from '../storage/records.js';
import type { Storage } from '../storage/types.js';
import type { ServerKeys } from '../keys/server-keys.js';
import { isDestructive, paramsUser, serverAction } from '../core/actions/table.js';
import { checkReleaseExists, checkUpgradeRequest, isUpgradeRequest } from '../core/actions/upgrade-params.js';

export const DEFAULT_DELIVER_WITHIN_MS = 24 * 3600 * 1000;
export const MAX_DELIVER_WITHIN_MS = 30 * 24 * 3600 * 1000;
export const DEFAULT_ABORT_MIN = 10;
export const DEFAULT_ROLLOUT_CONCURRENCY = 32;
export const MAX_RATE_PER_MIN = 100_000;
/** A plan lists (and checks in full) at most this many of its targets, the first by device id; the summary counts them all. */
export const PLAN_SAMPLE = 100;

export interface RolloutRequest {
  action: unknown;
  params?: unknown;
  userId?: string | number;
  selector: RolloutSelector;
  ttlSeconds?: number;
  deliverWithinMs?: number;
  ratePerMin?: number;
  rampFrom?: number;
  rampFactor?: number;
  abortPercent?: number;
  abortMin?: number;
  concurrency?: number;
}

export interface PlannedTarget {
  deviceId: string;
  presence: Presence;
  lastSeenAt: number | null;
  agentVersion: string | null;
  /** Null when a command to it checks; else why it would not be sent. */
  problem: { code: string; message: string } | null;
}

/** Every target of a plan, counted by the storage. */
export interface PlanSummary {
  targets: number;
  online: number;
  offline: number;
  unknown: number;
  /** Targets the registry tells a command would not be sent to (decommissioned, no key, no user). */
  notSendable: number;
}

export interface RolloutPlan {
  spec: RolloutSpec;
  /** The params as the action's schema validated them. */
  params: Record<string, unknown>;
  summary: PlanSummary;
  /** The first PLAN_SAMPLE targets (named devices in their order, the others by id), each command checked in full. */
  sample: PlannedTarget[];
  /** Whether the devices get their own user as the command's (no user named, no re-binding): one bound to none is not sent to. */
  needsDeviceUser: boolean;
}

const usage = (message: string): CodedError => new CodedError('E_USAGE', message);

function checkInteger(v: number | undefined, what: string, min: number, max: number): void {
  if (v !== undefined && (!Number.isSafeInteger(v) || v < min || v > max)) throw usage(`${what} must be an integer of ${min}-${max}`);
}

/** `100/min`, `5/s`, `600/h` or a plain number (per minute) -> commands per minute. */
export function parseRate(text: string | number, what = '--rate'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(?:\/\s*(s|sec|min|m|h|hour))?\s*$/.exec(String(text));
  if (!m) throw usage(`${what} "${text}" must be a rate such as 100/min, 5/s or 600/h`);
  const n = Number(m[1]);
  const unit = m[2] ?? 'min';
  const perMin = unit.startsWith('s') ? n * 60 : unit.startsWith('h') ? n / 60 : n;
  if (!Number.isFinite(perMin) || perMin < 1 || perMin > MAX_RATE_PER_MIN || !Number.isInteger(perMin)) {
    throw usage(`${what} "${text}" must come to a whole number of 1-${MAX_RATE_PER_MIN} per minute`);
  }
  return perMin;
}

/** `5%` or `5` -> 5 (0 < p <= 100). */
export function parsePercent(text: string | number, what = '--abort-when'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*%?\s*$/.exec(String(text));
  const p = m ? Number(m[1]) : Number.NaN;
  if (!(p > 0 && p <= 100)) throw usage(`${what} "${text}" must be a percentage above 0 and at most 100, e.g. 5%`);
  return p;
}

export async function planRollout(storage: Storage, keys: ServerKeys, req: RolloutRequest): Promise<RolloutPlan> {
  if (!isAction(req.action)) throw new CodedError('E_ACTION', `action must be one of ${ACTIONS.join(', ')}`);
  const action: Action = req.action;
  const raw = isRecord(req.params) && req.params.user_id !== undefined ? { ...req.params, user_id: userIdText(req.params.user_id) } : (req.params ?? {});
  if (!isRecord(raw)) throw new CodedError('E_PARAMS', 'params must be an object');
  // An upgrade is kept as the operator's request (release, arch, ...): each device gets the build for its arch when sealed.
  let params: Record<string, unknown>;
  if (serverAction(action).byRelease && isUpgradeRequest(raw)) {
    const req = checkUpgradeRequest(raw);
    await checkReleaseExists(storage, req);
    params = { ...req };
  } else params = validateParams(action, raw) as Record<string, unknown>;
  const ttlSeconds = req.ttlSeconds ?? DEFAULT_COMMAND_TTL_SECONDS;
  checkInteger(ttlSeconds, 'the command lifetime (--ttl, ttl_s)', 1, MAX_TTL_SECONDS);
  const within = req.deliverWithinMs ?? DEFAULT_DELIVER_WITHIN_MS;
  if (!Number.isSafeInteger(within) || within < 1000 || within > MAX_DELIVER_WITHIN_MS) {
    throw usage('the delivery deadline (--deliver-within, deliver_within_s) must be 1 s to 30 days');
  }
  checkInteger(req.ratePerMin, 'the rate (--rate, rate_per_min)', 1, MAX_RATE_PER_MIN);
  checkInteger(req.rampFrom, 'the ramp start (--ramp-from, ramp_from_per_min)', 1, MAX_RATE_PER_MIN);
  if (req.rampFrom !== undefined && req.ratePerMin !== undefined && req.rampFrom > req.ratePerMin) {
    throw usage(`the ramp starts at ${req.rampFrom}/min, above the rate of ${req.ratePerMin}/min`);
  }
  if (req.rampFactor !== undefined && (req.rampFrom === undefined || !(req.rampFactor > 1 && req.rampFactor <= 10))) {
    throw usage('the ramp factor (--ramp-factor, ramp_factor) must be above 1 and at most 10, with a ramp start (--ramp-from)');
  }
  if (req.abortPercent !== undefined && !(req.abortPercent > 0 && req.abortPercent <= 100)) throw usage('the abort percentage must be above 0 and at most 100');
  checkInteger(req.abortMin, 'the abort minimum (--abort-min, abort_min_results)', 1, 1_000_000);
  checkInteger(req.concurrency, 'the concurrency (--concurrency, concurrency)', 1, 1024);
  const userId = req.userId === undefined ? undefined : userIdText(req.userId);
  if (userId !== undefined && typeof userId !== 'string') throw usage('the user id must be text or a non-negative integer');
  const now = storage.now();
  // The command's user is each device's own unless the rollout names one (or an update re-binds to one).
  const needsDeviceUser = userId === undefined && paramsUser(action, params) === undefined;
  const summary = await storage.rollouts.summarize(req.selector, needsDeviceUser, now);
  const sample: PlannedTarget[] = [];
  for (const id of await storage.rollouts.sampleIds(req.selector, PLAN_SAMPLE)) {
    const d = await storage.devices.require(id);
    let problem: PlannedTarget['problem'] = null;
    try {
      await prepareCommand(storage, keys, { deviceId: d.id, action, params, ...(userId !== undefined ? { userId } : {}), ttlSeconds });
    } catch (err) {
      if (!(err instanceof CodedError)) throw err;
      problem = { code: err.code, message: err.message };
    }
    sample.push({
      deviceId: d.id,
      presence: presenceOf(d.presence, now),
      lastSeenAt: d.presence.lastSeenAt,
      agentVersion: d.presence.state?.agent_version ?? null,
      problem,
    });
  }
  const spec: RolloutSpec = {
    action,
    params,
    ...(userId !== undefined ? { userId } : {}),
    selector: req.selector,
    ttlSeconds,
    deadlineAt: now + within,
    ...(req.ratePerMin !== undefined ? { ratePerMin: req.ratePerMin } : {}),
    ...(req.rampFrom !== undefined ? { rampFrom: req.rampFrom, rampFactor: req.rampFactor ?? 2 } : {}),
    ...(req.abortPercent !== undefined ? { abortPercent: req.abortPercent } : {}),
    abortMin: req.abortMin ?? DEFAULT_ABORT_MIN,
    concurrency: req.concurrency ?? DEFAULT_ROLLOUT_CONCURRENCY,
  };
  return { spec, params, summary, sample, needsDeviceUser };
}

/**
 * Records the plan as a running rollout, its targets resolved again inside
 * the storage (one transaction): those the registry tells cannot be sent to are
 * recorded `not sent` with their code, the others pending (a command that
 * does not check when it is sealed makes its target `not sent` then). A single
 * named device whose command does not check is refused outright. A destructive
 * action (confirm.ts) whose selector now matches more devices than the plan
 * counted (and the operator confirmed) is refused, E_CONFIRM, nothing sent.
 */
export async function startRollout(
  storage: Storage,
  plan: RolloutPlan,
  options: { retryOf?: { id: string; inFlightLeftOut: number; removedLeftOut?: number }; by?: string } = {},
): Promise<RolloutRecord> {
  const only = plan.sample[0];
  const named = 'devices' in plan.spec.selector || 'retryOf' in plan.spec.selector;
  if (named && plan.summary.targets === 1 && only?.problem) throw new CodedError(only.problem.code, only.problem.message);
  return storage.rollouts.createFromSelector(plan.spec, {
    needsDeviceUser: plan.needsDeviceUser,
    ...(options.retryOf ? { retryOf: options.retryOf } : {}),
    ...(options.by !== undefined ? { by: options.by } : {}),
    // A destructive action never reaches more devices than the plan counted (what was confirmed, confirm.ts):
    // the selector is resolved again as the targets are recorded, and the fleet may have grown meanwhile.
    ...(isDestructive(plan.spec.action) ? { maxTargets: plan.summary.targets } : {}),
  });
}
