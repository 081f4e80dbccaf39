/**
 * Planning a rollout: the request checked in full (action, params, rate, ramp,
 * abort rule, lifetimes), the targets its selector matches with their presence
 * and, per device, whether a command to it checks. A dry run prints the plan;
 * starting records it. Neither seals, publishes nor takes a seq.
 */
import { type Action, CodedError, DEFAULT_COMMAND_TTL_SECONDS, isAction, isRecord, MAX_TTL_SECONDS, validateParams } from '../../protocol/index.js';
import { prepareCommand, userIdText } from '../command-sender.js';
import { presenceOf, type Presence } from '../presence.js';
import { RegistryError } from '../registry/errors.js';
import type { Registry } from '../registry/registry.js';
import { RolloutStore, type RolloutRecord, type RolloutSelector, type RolloutSpec } from '../registry/rollouts.js';
import type { DeviceRecord } from '../registry/types.js';
import type { ServerKeys } from '../server-keys.js';

export const DEFAULT_DELIVER_WITHIN_MS = 24 * 3600 * 1000;
export const MAX_DELIVER_WITHIN_MS = 30 * 24 * 3600 * 1000;
export const DEFAULT_ABORT_MIN = 10;
export const DEFAULT_ROLLOUT_CONCURRENCY = 32;
export const MAX_RATE_PER_MIN = 100_000;

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

export interface RolloutPlan {
  spec: RolloutSpec;
  /** The params as the action's schema validated them. */
  params: Record<string, unknown>;
  targets: PlannedTarget[];
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

/** The devices a selector matches. `devices` names them (each must exist); the others skip decommissioned devices and those without a key. */
export function selectTargets(registry: Registry, selector: RolloutSelector): DeviceRecord[] {
  if ('devices' in selector) {
    // Every unknown id is named at once (a list typed or read from a file): nothing is recorded.
    const found = selector.devices.map((id) => registry.getDevice(id));
    const unknown = selector.devices.filter((_, i) => found[i] === undefined);
    if (unknown.length === 1) throw new RegistryError('E_NO_DEVICE', `device ${unknown[0]} is not registered`);
    if (unknown.length > 1) {
      const shown = unknown.slice(0, 20).join(', ');
      throw new RegistryError(
        'E_NO_DEVICE',
        `${unknown.length} devices are not registered: ${shown}${unknown.length > 20 ? `, ... (${unknown.length - 20} more)` : ''}`,
      );
    }
    return found as DeviceRecord[];
  }
  const devices =
    'userId' in selector
      ? registry.listDevices({ userId: selector.userId })
      : 'tag' in selector
        ? registry.listDevices({ tag: selector.tag })
        : registry.listDevices();
  return devices.filter((d) => d.state !== 'decommissioned' && d.encryption);
}

export function planRollout(registry: Registry, keys: ServerKeys, req: RolloutRequest): RolloutPlan {
  if (!isAction(req.action)) throw new CodedError('E_ACTION', 'action must be one of request, update, rotate, delete, selftest');
  const action: Action = req.action;
  const raw = isRecord(req.params) && req.params.user_id !== undefined ? { ...req.params, user_id: userIdText(req.params.user_id) } : (req.params ?? {});
  if (!isRecord(raw)) throw new CodedError('E_PARAMS', 'params must be an object');
  const params = validateParams(action, raw) as Record<string, unknown>;
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
  const now = registry.now();
  const targets = selectTargets(registry, req.selector).map((d): PlannedTarget => {
    let problem: PlannedTarget['problem'] = null;
    try {
      prepareCommand(registry, keys, { deviceId: d.id, action, params, ...(userId !== undefined ? { userId } : {}), ttlSeconds });
    } catch (err) {
      if (!(err instanceof CodedError)) throw err;
      problem = { code: err.code, message: err.message };
    }
    return {
      deviceId: d.id,
      presence: presenceOf(d.presence, now),
      lastSeenAt: d.presence.lastSeenAt,
      agentVersion: d.presence.state?.agent_version ?? null,
      problem,
    };
  });
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
  return { spec, params, targets };
}

/**
 * Records the plan as a running rollout: targets whose command checks become
 * pending; the others are recorded `not sent` with their code. A single named
 * device whose command does not check is refused outright.
 */
export function startRollout(registry: Registry, plan: RolloutPlan): RolloutRecord {
  const bad = plan.targets.filter((t) => t.problem);
  if ('devices' in plan.spec.selector && plan.targets.length === 1 && bad[0]?.problem) throw new CodedError(bad[0].problem.code, bad[0].problem.message);
  const store = new RolloutStore(registry);
  const r = store.create(
    plan.spec,
    plan.targets.map((t) => t.deviceId),
  );
  for (const t of bad) store.move(r.id, t.deviceId, ['pending'], 'not sent', { code: t.problem?.code ?? 'E_INTERNAL' });
  if (bad.length === plan.targets.length && bad.length > 0) store.finish(r.id, 'completed', 'no target could be sent to');
  return store.require(r.id);
}
