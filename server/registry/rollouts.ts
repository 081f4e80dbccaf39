/**
 * Rollouts in the registry: one action to many devices, its targets and their
 * delivery states, and the lease that lets one engine at a time drive them.
 * Every state change is a conditional UPDATE in an IMMEDIATE transaction, so a
 * second process (a `rollout pause` from the CLI, the HTTP API) never races the
 * engine into an inconsistent row.
 */
import { randomUUID } from 'node:crypto';
import { RegistryError } from './errors.js';
import type { Registry } from './registry.js';

export const ROLLOUT_STATES = ['running', 'paused', 'aborted', 'cancelled', 'completed'] as const;
export type RolloutState = (typeof ROLLOUT_STATES)[number];
export const TARGET_STATES = ['pending', 'sending', 'sent', 'applied', 'rejected', 'failed', 'expired', 'cancelled', 'not sent'] as const;
export type TargetState = (typeof TARGET_STATES)[number];
/** Target states that are final. */
export const FINAL_TARGET_STATES: readonly TargetState[] = ['applied', 'rejected', 'failed', 'expired', 'cancelled', 'not sent'];

export type RolloutSelector = { all: true } | { userId: string } | { tag: string } | { devices: string[] };

export interface RolloutSpec {
  action: string;
  params: Record<string, unknown>;
  /** The command's user_id (default: each device's user). */
  userId?: string;
  selector: RolloutSelector;
  /** Lifetime of each sealed command (capped at the deadline). */
  ttlSeconds: number;
  /** Nothing is delivered after this (ms since the epoch). */
  deadlineAt: number;
  /** Commands sealed per minute at most; undefined: no rate limit (concurrency only). */
  ratePerMin?: number;
  /** Exponential ramp: start at this rate, multiply by rampFactor each time as many devices applied as the current rate. */
  rampFrom?: number;
  rampFactor?: number;
  /** Abort when failures (rejected + failed) reach this percentage of results ... */
  abortPercent?: number;
  /** ... once there are at least this many results. */
  abortMin: number;
  /** Commands in flight (sent, unanswered, still valid) at most. */
  concurrency: number;
}

export interface RolloutRecord extends RolloutSpec {
  id: string;
  createdAt: number;
  state: RolloutState;
  stateReason: string | null;
  updatedAt: number;
  finishedAt: number | null;
  /** The rollout whose targets that did not apply this one retries (rollout retry), if any. */
  retryOf: string | null;
}

export interface TargetRecord {
  rolloutId: string;
  deviceId: string;
  state: TargetState;
  jti: string | null;
  attempts: number;
  code: string | null;
  sentAt: number | null;
  updatedAt: number;
}

interface RolloutRow {
  id: string;
  created_at: number;
  action: string;
  params: string;
  user_id: string | null;
  selector: string;
  ttl_s: number;
  deadline_at: number;
  rate_per_min: number | null;
  ramp_from: number | null;
  ramp_factor: number | null;
  abort_percent: number | null;
  abort_min: number;
  concurrency: number;
  state: RolloutState;
  state_reason: string | null;
  updated_at: number;
  finished_at: number | null;
  retry_of: string | null;
}

interface TargetRow {
  rollout_id: string;
  device_id: string;
  state: TargetState;
  jti: string | null;
  attempts: number;
  code: string | null;
  sent_at: number | null;
  updated_at: number;
}

export type TargetCounts = Record<TargetState, number>;

export function emptyCounts(): TargetCounts {
  return Object.fromEntries(TARGET_STATES.map((s) => [s, 0])) as TargetCounts;
}

export class RolloutStore {
  readonly #reg: Registry;

  constructor(registry: Registry) {
    this.#reg = registry;
  }

  get #db() {
    return this.#reg.db;
  }

  create(spec: RolloutSpec, deviceIds: readonly string[]): RolloutRecord {
    const id = randomUUID();
    const now = this.#reg.now();
    this.#db
      .transaction(() => {
        this.#db
          .prepare(
            `INSERT INTO rollouts (id, created_at, action, params, user_id, selector, ttl_s, deadline_at, rate_per_min, ramp_from, ramp_factor,
               abort_percent, abort_min, concurrency, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)`,
          )
          .run(
            id,
            now,
            spec.action,
            JSON.stringify(spec.params),
            spec.userId ?? null,
            JSON.stringify(spec.selector),
            spec.ttlSeconds,
            spec.deadlineAt,
            spec.ratePerMin ?? null,
            spec.rampFrom ?? null,
            spec.rampFactor ?? null,
            spec.abortPercent ?? null,
            spec.abortMin,
            spec.concurrency,
            now,
          );
        const insert = this.#db.prepare("INSERT INTO rollout_targets (rollout_id, device_id, state, updated_at) VALUES (?, ?, 'pending', ?)");
        for (const d of deviceIds) insert.run(id, d, now);
        this.#reg.audit('rollout.create', null, {
          rollout_id: id,
          action: spec.action,
          selector: spec.selector,
          devices: deviceIds.length,
          deadline_at: new Date(spec.deadlineAt).toISOString(),
          rate_per_min: spec.ratePerMin ?? null,
          abort_percent: spec.abortPercent ?? null,
        });
        if (deviceIds.length === 0) this.#finish(id, 'completed', 'no devices matched', now);
      })
      .immediate();
    return this.require(id);
  }

  get(id: string): RolloutRecord | undefined {
    const row = this.#db.prepare('SELECT * FROM rollouts WHERE id = ?').get(id) as RolloutRow | undefined;
    return row ? rolloutRecord(row) : undefined;
  }

  require(id: string): RolloutRecord {
    const r = this.get(id);
    if (!r) throw new RegistryError('E_NO_ROLLOUT', `no rollout with id ${id}`);
    return r;
  }

  list(options: { limit?: number; unfinished?: boolean } = {}): RolloutRecord[] {
    const rows = this.#db
      .prepare(`SELECT * FROM rollouts ${options.unfinished ? 'WHERE finished_at IS NULL' : ''} ORDER BY created_at DESC, id LIMIT ?`)
      .all(options.limit ?? 100) as RolloutRow[];
    return rows.map(rolloutRecord);
  }

  counts(id: string): TargetCounts {
    const counts = emptyCounts();
    for (const r of this.#db.prepare('SELECT state, COUNT(*) AS n FROM rollout_targets WHERE rollout_id = ? GROUP BY state').all(id) as {
      state: TargetState;
      n: number;
    }[])
      counts[r.state] = r.n;
    return counts;
  }

  targets(id: string, options: { states?: readonly TargetState[]; limit?: number } = {}): TargetRecord[] {
    const states = options.states ?? TARGET_STATES;
    const rows = this.#db
      .prepare(`SELECT * FROM rollout_targets WHERE rollout_id = ? AND state IN (${states.map(() => '?').join(',')}) ORDER BY device_id LIMIT ?`)
      .all(id, ...states, options.limit ?? 1_000_000) as TargetRow[];
    return rows.map(targetRecord);
  }

  /**
   * Pending targets whose device may be sent to now: online by its reports (the
   * last one received within PRESENCE_GRACE x its announced interval, see
   * server/presence.ts), or never reported (an agent without reports: sent as before).
   */
  deliverable(id: string, now: number, limit: number): TargetRecord[] {
    if (limit <= 0) return [];
    const rows = this.#db
      .prepare(
        `SELECT t.* FROM rollout_targets t LEFT JOIN devices d ON d.id = t.device_id
         WHERE t.rollout_id = ? AND t.state = 'pending'
           AND (d.id IS NULL OR d.last_seen_at IS NULL OR (d.presence = 'online' AND d.last_seen_at + d.report_interval_s * 2500 >= ?))
         ORDER BY t.attempts, t.device_id LIMIT ?`,
      )
      .all(id, now, limit) as TargetRow[];
    return rows.map(targetRecord);
  }

  /** Moves a target from one state to another; false when it was not in `from` (someone else moved it). */
  move(
    id: string,
    deviceId: string,
    from: readonly TargetState[],
    to: TargetState,
    fields: { jti?: string | null; code?: string | null; sent?: boolean; attempt?: boolean } = {},
  ): boolean {
    const now = this.#reg.now();
    const sets = ['state = ?', 'updated_at = ?'];
    const args: (string | number | null)[] = [to, now];
    if (fields.jti !== undefined) {
      sets.push('jti = ?');
      args.push(fields.jti);
    }
    if (fields.code !== undefined) {
      sets.push('code = ?');
      args.push(fields.code);
    }
    if (fields.sent) {
      sets.push('sent_at = ?');
      args.push(now);
    }
    if (fields.attempt) sets.push('attempts = attempts + 1');
    const res = this.#db
      .prepare(`UPDATE rollout_targets SET ${sets.join(', ')} WHERE rollout_id = ? AND device_id = ? AND state IN (${from.map(() => '?').join(',')})`)
      .run(...args, id, deviceId, ...from);
    return res.changes === 1;
  }

  /**
   * Takes a pending target for sending (pending -> sending, one more attempt),
   * only while its rollout is running: a pause or cancel committed by another
   * process an instant earlier wins.
   */
  claim(id: string, deviceId: string): boolean {
    return (
      this.#db
        .prepare(
          `UPDATE rollout_targets SET state = 'sending', attempts = attempts + 1, updated_at = ?
           WHERE rollout_id = ? AND device_id = ? AND state = 'pending' AND (SELECT state FROM rollouts WHERE id = ?) = 'running'`,
        )
        .run(this.#reg.now(), id, deviceId, id).changes === 1
    );
  }

  /**
   * Targets in flight whose command has been answered: the answer, with the
   * command's code, to be settled by the engine.
   */
  answered(id: string): { deviceId: string; jti: string; status: 'applied' | 'rejected' | 'failed'; code: string | null }[] {
    return this.#db
      .prepare(
        `SELECT t.device_id AS deviceId, t.jti AS jti, c.ack_status AS status, c.ack_code AS code FROM rollout_targets t JOIN commands c ON c.jti = t.jti
         WHERE t.rollout_id = ? AND t.state = 'sent' AND c.ack_status IS NOT NULL`,
      )
      .all(id) as { deviceId: string; jti: string; status: 'applied' | 'rejected' | 'failed'; code: string | null }[];
  }

  /** How many targets are in flight: sent, unanswered, and their command still valid. */
  inFlight(id: string, now: number): number {
    const row = this.#db
      .prepare(
        `SELECT COUNT(*) AS n FROM rollout_targets t LEFT JOIN commands c ON c.jti = t.jti
         WHERE t.rollout_id = ? AND (t.state = 'sending' OR (t.state = 'sent' AND (c.expires_at IS NULL OR c.expires_at > ?)))`,
      )
      .get(id, now) as { n: number };
    return row.n;
  }

  /** Sent targets of a device whose command expired unanswered (the board was away): their jti. */
  unansweredExpired(deviceId: string, now: number): { rolloutId: string; jti: string }[] {
    return this.#db
      .prepare(
        `SELECT t.rollout_id AS rolloutId, t.jti AS jti FROM rollout_targets t JOIN commands c ON c.jti = t.jti JOIN rollouts r ON r.id = t.rollout_id
         WHERE t.device_id = ? AND t.state = 'sent' AND c.ack_status IS NULL AND c.expires_at <= ? AND r.deadline_at > ?`,
      )
      .all(deviceId, now, now) as { rolloutId: string; jti: string }[];
  }

  /** Rollouts with a pending target for this device (the engine looks at them first when the device reports in). */
  pendingFor(deviceId: string): string[] {
    return (
      this.#db
        .prepare(
          `SELECT t.rollout_id AS id FROM rollout_targets t JOIN rollouts r ON r.id = t.rollout_id
           WHERE t.device_id = ? AND t.state = 'pending' AND r.state = 'running'`,
        )
        .all(deviceId) as { id: string }[]
    ).map((r) => r.id);
  }

  /** Every target not final becomes `expired` (the deadline passed). Returns how many. */
  expireAll(id: string): number {
    const now = this.#reg.now();
    return this.#db
      .prepare(
        `UPDATE rollout_targets SET state = 'expired', code = COALESCE(code, 'E_DEADLINE'), updated_at = ? WHERE rollout_id = ? AND state IN ('pending', 'sending', 'sent')`,
      )
      .run(now, id).changes;
  }

  /** Pending targets become `cancelled` (the rollout was cancelled or aborted). */
  cancelPending(id: string, code: string): number {
    return this.#db
      .prepare(`UPDATE rollout_targets SET state = 'cancelled', code = ?, updated_at = ? WHERE rollout_id = ? AND state = 'pending'`)
      .run(code, this.#reg.now(), id).changes;
  }

  /** Changes the rollout's state when it is in one of `from`; throws E_ROLLOUT_STATE otherwise. */
  setState(id: string, from: readonly RolloutState[], to: RolloutState, reason: string, by: string): RolloutRecord {
    return this.#db
      .transaction(() => {
        const r = this.require(id);
        if (!from.includes(r.state)) {
          throw new RegistryError(
            'E_ROLLOUT_STATE',
            `rollout ${id} is ${r.state}: it cannot be ${to === 'running' ? 'resumed' : to} (only when ${from.join(' or ')})`,
          );
        }
        const now = this.#reg.now();
        this.#db.prepare('UPDATE rollouts SET state = ?, state_reason = ?, updated_at = ? WHERE id = ?').run(to, reason, now, id);
        if (to === 'cancelled' || to === 'aborted') this.cancelPending(id, to === 'cancelled' ? 'E_CANCELLED' : 'E_ABORTED');
        this.#reg.audit(
          `rollout.${to === 'running' ? 'resume' : to === 'paused' ? 'pause' : to === 'cancelled' ? 'cancel' : to === 'aborted' ? 'abort' : 'complete'}`,
          null,
          {
            rollout_id: id,
            reason,
            by,
          },
        );
        return this.require(id);
      })
      .immediate();
  }

  /** Marks a rollout finished (nothing pending or in flight is left). */
  finish(id: string, state: RolloutState, reason: string): void {
    this.#db.transaction(() => this.#finish(id, state, reason, this.#reg.now())).immediate();
  }

  #finish(id: string, state: RolloutState, reason: string, now: number): void {
    this.#db
      // A rollout cancelled or aborted meanwhile (another process) ends in that state, not `completed`.
      .prepare(
        `UPDATE rollouts SET state = CASE WHEN state IN ('running', 'paused') THEN ? ELSE state END, state_reason = COALESCE(state_reason, ?),
           finished_at = ?, updated_at = ? WHERE id = ? AND finished_at IS NULL`,
      )
      .run(state, reason, now, now, id);
    const counts = this.counts(id);
    this.#reg.audit('rollout.finished', null, { rollout_id: id, state: this.require(id).state, reason, ...counts });
  }

  // ---- the engine lease --------------------------------------------------------

  /** Takes or renews the lease `name` for `holder` until now + ttlMs; false while another holder's lease is live. */
  takeLease(name: string, holder: string, ttlMs: number): boolean {
    return this.#db
      .transaction(() => {
        const now = this.#reg.now();
        const row = this.#db.prepare('SELECT holder, expires_at FROM leases WHERE name = ?').get(name) as { holder: string; expires_at: number } | undefined;
        if (row && row.holder !== holder && row.expires_at > now) return false;
        this.#db
          .prepare(
            'INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at',
          )
          .run(name, holder, now + ttlMs);
        return true;
      })
      .immediate();
  }

  releaseLease(name: string, holder: string): void {
    this.#db.prepare('DELETE FROM leases WHERE name = ? AND holder = ?').run(name, holder);
  }

  /** The live holder of a lease, if any. */
  leaseHolder(name: string): string | undefined {
    const row = this.#db.prepare('SELECT holder, expires_at FROM leases WHERE name = ?').get(name) as { holder: string; expires_at: number } | undefined;
    return row && row.expires_at > this.#reg.now() ? row.holder : undefined;
  }
}

function rolloutRecord(row: RolloutRow): RolloutRecord {
  return {
    id: row.id,
    createdAt: row.created_at,
    action: row.action,
    params: JSON.parse(row.params) as Record<string, unknown>,
    ...(row.user_id !== null ? { userId: row.user_id } : {}),
    selector: JSON.parse(row.selector) as RolloutSelector,
    ttlSeconds: row.ttl_s,
    deadlineAt: row.deadline_at,
    ...(row.rate_per_min !== null ? { ratePerMin: row.rate_per_min } : {}),
    ...(row.ramp_from !== null ? { rampFrom: row.ramp_from } : {}),
    ...(row.ramp_factor !== null ? { rampFactor: row.ramp_factor } : {}),
    ...(row.abort_percent !== null ? { abortPercent: row.abort_percent } : {}),
    abortMin: row.abort_min,
    concurrency: row.concurrency,
    state: row.state,
    stateReason: row.state_reason,
    updatedAt: row.updated_at,
    finishedAt: row.finished_at,
    retryOf: row.retry_of,
  };
}

function targetRecord(row: TargetRow): TargetRecord {
  return {
    rolloutId: row.rollout_id,
    deviceId: row.device_id,
    state: row.state,
    jti: row.jti,
    attempts: row.attempts,
    code: row.code,
    sentAt: row.sent_at,
    updatedAt: row.updated_at,
  };
}
