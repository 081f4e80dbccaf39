/**
 * Rollouts in SQLite: one action to many devices, its targets and their
 * delivery states (the engine lease is leases.ts). Every state change is a
 * conditional UPDATE in an IMMEDIATE transaction, so a second process (a
 * `rollout pause` from the CLI, the HTTP API) never races the engine into an
 * inconsistent row. The plan's queries (summarize, sampleIds) resolve the
 * selector inside SQLite, PLAN_CHUNK devices at a time with the event loop
 * free in between, never a list of the fleet in memory.
 */
import { randomUUID } from 'node:crypto';
import type Database from 'better-sqlite3';
import { CodedError } from '../../../protocol/index.js';
import { PRESENCE_GRACE } from '../../core/presence.js';
import { RegistryError } from '../errors.js';
import {
  PLAN_CHUNK,
  PLANNING_STALE_MS,
  TARGET_STATES,
  emptyCounts,
  selectorForAudit,
  type PlanSummary,
  type RolloutRecord,
  type RolloutSelector,
  type RolloutSpec,
  type RolloutState,
  type TargetCounts,
  type TargetRecord,
  type TargetState,
  type Lease,
} from '../records.js';
import { rolloutRecord, targetRecord, type RolloutRow, type TargetRow } from '../rows.js';
import { assertTag } from '../rules.js';
import type { CreateFromSelectorOptions, RolloutStore, TargetMoveFields } from '../types.js';
import { appendAudit } from './audit.js';
import type { SqliteDb } from './db.js';
import { LEASE_HELD, leaseArgs, leaseHeld, renewLease } from './leases.js';

/**
 * A target's device `d` (LEFT JOINed: gone is NULL) may be sent to now (bind
 * now): online by its reports (the last one within PRESENCE_GRACE x its
 * interval, see server/core/presence.ts), or never reported (sent to as before).
 */
const REACHABLE_NOW = "(d.id IS NULL OR d.last_seen_at IS NULL OR (d.presence = 'online' AND d.last_seen_at + d.report_interval_s * 2500 >= ?))";

/** A device `d` has a current encryption key (what every command is sealed to). */
const HAS_ENC_KEY = "EXISTS (SELECT 1 FROM device_keys k WHERE k.device_id = d.id AND k.use = 'enc' AND k.status = 'current')";

/**
 * The devices a selector matches, as a condition over `devices d` with its
 * arguments, resolved inside SQLite (no list of the fleet in memory): named
 * devices as named (each must exist: E_NO_DEVICE), the others without the
 * decommissioned devices and those without an encryption key.
 */
export function selectorCondition(db: Database.Database, selector: RolloutSelector): { sql: string; args: string[] } {
  if ('devices' in selector) {
    const ids = JSON.stringify(selector.devices);
    // Every unknown id is named at once (a list typed or read from a file): nothing is recorded.
    const unknown = (db.prepare('SELECT value AS id FROM json_each(?) WHERE value NOT IN (SELECT id FROM devices)').all(ids) as { id: string }[]).map(
      (r) => r.id,
    );
    if (unknown.length === 1) throw new RegistryError('E_NO_DEVICE', `device ${unknown[0]} is not registered`);
    if (unknown.length > 1) {
      const shown = unknown.slice(0, 20).join(', ');
      throw new RegistryError(
        'E_NO_DEVICE',
        `${unknown.length} devices are not registered: ${shown}${unknown.length > 20 ? `, ... (${unknown.length - 20} more)` : ''}`,
      );
    }
    return { sql: 'd.id IN (SELECT value FROM json_each(?))', args: [ids] };
  }
  if ('retryOf' in selector) {
    // Like named devices (no usability filter: one that cannot be sent to is recorded `not sent` with its code).
    return {
      sql: `d.id IN (SELECT device_id FROM rollout_targets WHERE rollout_id = ? AND state IN (${selector.states.map(() => '?').join(',')}))`,
      args: [selector.retryOf, ...selector.states],
    };
  }
  const usable = `d.state != 'decommissioned' AND ${HAS_ENC_KEY}`;
  if ('userId' in selector) return { sql: `d.user_id = ? AND ${usable}`, args: [selector.userId] };
  if ('tag' in selector) {
    // A tag no device can carry is a typo, not an empty selection.
    assertTag(selector.tag);
    return { sql: `d.id IN (SELECT device_id FROM device_tags WHERE tag = ?) AND ${usable}`, args: [selector.tag] };
  }
  return { sql: usable, args: [] };
}

/**
 * Why a command to device `d` would not be sent, as far as the registry tells
 * (SQL: the code, or NULL): decommissioned, no encryption key, or bound to no
 * user while the rollout names none (`needsDeviceUser`). The full check of each
 * command runs when it is sealed (a refusal then makes the target `not sent`).
 */
export function targetProblemSql(needsDeviceUser: boolean): string {
  return `CASE WHEN d.state = 'decommissioned' THEN 'E_DECOMMISSIONED' WHEN NOT ${HAS_ENC_KEY} THEN 'E_NO_KEY'${
    needsDeviceUser ? " WHEN d.user_id IS NULL THEN 'E_USAGE'" : ''
  } ELSE NULL END`;
}

export class SqliteRolloutStore implements RolloutStore {
  readonly #s: SqliteDb;

  constructor(s: SqliteDb) {
    this.#s = s;
  }

  async create(spec: RolloutSpec, deviceIds: readonly string[]): Promise<RolloutRecord> {
    const id = randomUUID();
    const now = this.#s.now();
    this.#s.db
      .transaction(() => {
        this.#insertRollout(id, spec, now);
        const insert = this.#s.db.prepare("INSERT INTO rollout_targets (rollout_id, device_id, state, updated_at) VALUES (?, ?, 'pending', ?)");
        for (const d of deviceIds) insert.run(id, d, now);
        this.#auditCreate(id, spec, deviceIds.length);
        if (deviceIds.length === 0) this.#finish(id, 'completed', 'no devices matched', now);
      })
      .immediate();
    return this.#require(id);
  }

  /**
   * Records a rollout with a target per device its selector matches, resolved
   * inside SQLite: the rollout row first (planning: not driven yet), then the
   * targets in chunks of `chunk` devices (INSERT ... SELECT, one short
   * transaction each, the event loop free in between: memory and each pause do
   * not grow with the fleet), then the rollout is released to the engine. A
   * device the registry tells would not be sent to (see targetProblemSql) is
   * recorded `not sent` with its code.
   */
  async createFromSelector(
    spec: RolloutSpec,
    /**
     * maxTargets: at most this many targets (the count a destructive action was
     * confirmed for): when the selector now matches more, the rollout is cancelled
     * and finished before it is released (nothing sent) and E_CONFIRM thrown.
     */
    options: CreateFromSelectorOptions,
  ): Promise<RolloutRecord> {
    const id = randomUUID();
    const where = selectorCondition(this.#s.db, spec.selector);
    const chunk = options.chunk ?? PLAN_CHUNK;
    this.#s.db.transaction(() => this.#insertRollout(id, spec, this.#s.now(), true, options.retryOf?.id)).immediate();
    const insert = this.#s.db.prepare(
      `INSERT INTO rollout_targets (rollout_id, device_id, state, code, updated_at)
       SELECT ?, id, CASE WHEN problem IS NULL THEN 'pending' ELSE 'not sent' END, problem, ?
       FROM (SELECT d.id AS id, ${targetProblemSql(options.needsDeviceUser)} AS problem FROM devices d WHERE d.id > ? AND ${where.sql} ORDER BY d.id LIMIT ?)`,
    );
    const last = this.#s.db.prepare('SELECT MAX(device_id) AS id FROM rollout_targets WHERE rollout_id = ?');
    // The planning heartbeat: a rollout left planning with a stale one was interrupted (finishInterruptedPlanning).
    const heartbeat = this.#s.db.prepare('UPDATE rollouts SET updated_at = ? WHERE id = ? AND planning = 1 AND finished_at IS NULL');
    let after = '';
    let total = 0;
    for (;;) {
      const added = this.#s.db
        .transaction(() => {
          const now = this.#s.now();
          // Finished meanwhile (found interrupted by the engine): nothing more is recorded.
          if (heartbeat.run(now, id).changes === 0) return -1;
          return insert.run(id, now, after, ...where.args, chunk).changes;
        })
        .immediate();
      if (added < 0) return this.#require(id);
      total += added;
      if (options.maxTargets !== undefined && total > options.maxTargets) {
        const reason = `refused: the selector now matches more than the ${options.maxTargets} device(s) confirmed (E_CONFIRM); nothing sent`;
        this.#s.db
          .transaction(() => {
            const now = this.#s.now();
            this.#s.db.prepare("UPDATE rollouts SET planning = 0, state = 'cancelled', state_reason = ?, updated_at = ? WHERE id = ?").run(reason, now, id);
            this.#cancelPending(id, 'E_CONFIRM');
            this.#finish(id, 'cancelled', reason, now);
          })
          .immediate();
        throw new CodedError(
          'E_CONFIRM',
          `${spec.action} was confirmed for ${options.maxTargets} device(s), but the selector now matches more: nothing sent (rollout ${id} cancelled); plan and confirm again`,
        );
      }
      if (added < chunk) break;
      after = (last.get(id) as { id: string }).id;
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    this.#s.db
      .transaction(() => {
        const now = this.#s.now();
        this.#s.db.prepare('UPDATE rollouts SET planning = 0, updated_at = ? WHERE id = ?').run(now, id);
        const r = this.#require(id);
        // Cancelled or aborted while its targets were recorded: those recorded after are cancelled too.
        if (r.state === 'cancelled' || r.state === 'aborted') this.#cancelPending(id, r.state === 'cancelled' ? 'E_CANCELLED' : 'E_ABORTED');
        this.#auditCreate(id, spec, total, options.by);
        if (options.retryOf) {
          appendAudit(this.#s, 'rollout.retry', null, {
            rollout_id: id,
            retry_of: options.retryOf.id,
            devices: total,
            in_flight_left_out: options.retryOf.inFlightLeftOut,
            removed_left_out: options.retryOf.removedLeftOut ?? 0,
            ...(options.by !== undefined ? { by: options.by } : {}),
          });
        }
        if (total === 0) this.#finish(id, 'completed', 'no devices matched', now);
        else if (this.#counts(id).pending === 0 && r.state !== 'cancelled' && r.state !== 'aborted')
          this.#finish(id, 'completed', 'no target could be sent to', now);
      })
      .immediate();
    return this.#require(id);
  }

  #insertRollout(id: string, spec: RolloutSpec, now: number, planning = false, retryOf?: string): void {
    this.#s.db
      .prepare(
        `INSERT INTO rollouts (id, created_at, action, params, user_id, selector, ttl_s, deadline_at, rate_per_min, ramp_from, ramp_factor,
               abort_percent, abort_min, concurrency, state, updated_at, planning, retry_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)`,
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
        planning ? 1 : 0,
        retryOf ?? null,
      );
  }

  #auditCreate(id: string, spec: RolloutSpec, devices: number, by?: string): void {
    appendAudit(this.#s, 'rollout.create', null, {
      rollout_id: id,
      action: spec.action,
      selector: selectorForAudit(spec.selector),
      devices,
      deadline_at: new Date(spec.deadlineAt).toISOString(),
      rate_per_min: spec.ratePerMin ?? null,
      abort_percent: spec.abortPercent ?? null,
      ...(by !== undefined ? { by } : {}),
    });
  }

  async get(id: string): Promise<RolloutRecord | undefined> {
    return this.#get(id);
  }

  #get(id: string): RolloutRecord | undefined {
    const row = this.#s.db.prepare('SELECT * FROM rollouts WHERE id = ?').get(id) as RolloutRow | undefined;
    return row ? rolloutRecord(row) : undefined;
  }

  async require(id: string): Promise<RolloutRecord> {
    return this.#require(id);
  }

  #require(id: string): RolloutRecord {
    const r = this.#get(id);
    if (!r) throw new RegistryError('E_NO_ROLLOUT', `no rollout with id ${id}`);
    return r;
  }

  async list(options: { limit?: number; unfinished?: boolean } = {}): Promise<RolloutRecord[]> {
    const rows = this.#s.db
      .prepare(`SELECT * FROM rollouts ${options.unfinished ? 'WHERE finished_at IS NULL' : ''} ORDER BY created_at DESC, id LIMIT ?`)
      .all(options.limit ?? 100) as RolloutRow[];
    return rows.map(rolloutRecord);
  }

  async counts(id: string): Promise<TargetCounts> {
    return this.#counts(id);
  }

  #counts(id: string): TargetCounts {
    const counts = emptyCounts();
    for (const r of this.#s.db.prepare('SELECT state, COUNT(*) AS n FROM rollout_targets WHERE rollout_id = ? GROUP BY state').all(id) as {
      state: TargetState;
      n: number;
    }[])
      counts[r.state] = r.n;
    return counts;
  }

  async targets(id: string, options: { states?: readonly TargetState[]; limit?: number } = {}): Promise<TargetRecord[]> {
    const states = options.states ?? TARGET_STATES;
    const rows = this.#s.db
      .prepare(`SELECT * FROM rollout_targets WHERE rollout_id = ? AND state IN (${states.map(() => '?').join(',')}) ORDER BY device_id LIMIT ?`)
      .all(id, ...states, options.limit ?? 1_000_000) as TargetRow[];
    return rows.map(targetRecord);
  }

  /**
   * Pending targets whose device may be sent to now: online by its reports (the
   * last one received within PRESENCE_GRACE x its announced interval, see
   * server/core/presence.ts), or never reported (an agent without reports: sent as before),
   * and not held back by a re-send backoff (next_at).
   */
  async deliverable(id: string, now: number, limit: number): Promise<TargetRecord[]> {
    if (limit <= 0) return [];
    const rows = this.#s.db
      .prepare(
        `SELECT t.* FROM rollout_targets t LEFT JOIN devices d ON d.id = t.device_id
         WHERE t.rollout_id = ? AND t.state = 'pending' AND (t.next_at IS NULL OR t.next_at <= ?)
           AND ${REACHABLE_NOW}
         ORDER BY t.attempts, t.device_id LIMIT ?`,
      )
      .all(id, now, now, limit) as TargetRow[];
    return rows.map(targetRecord);
  }

  /**
   * The pending targets counted (no rows loaded) as `deliverable` tells them
   * apart: in a re-send backoff (next_at ahead, after an E_EXPIRED; with the
   * earliest end), else deliverable now, else waiting for an offline board.
   */
  async pendingBreakdown(id: string, now: number): Promise<{ deliverable: number; backoff: number; offline: number; backoffUntil: number | null }> {
    const row = this.#s.db
      .prepare(
        `SELECT COUNT(*) AS pending, COALESCE(SUM(t.next_at > ?), 0) AS backoff, MIN(CASE WHEN t.next_at > ? THEN t.next_at END) AS backoffUntil,
           COALESCE(SUM((t.next_at IS NULL OR t.next_at <= ?) AND ${REACHABLE_NOW}), 0) AS deliverable
         FROM rollout_targets t LEFT JOIN devices d ON d.id = t.device_id WHERE t.rollout_id = ? AND t.state = 'pending'`,
      )
      .get(now, now, now, now, id) as { pending: number; backoff: number; backoffUntil: number | null; deliverable: number };
    return {
      deliverable: row.deliverable,
      backoff: row.backoff,
      offline: row.pending - row.deliverable - row.backoff,
      backoffUntil: row.backoffUntil,
    };
  }

  /** Moves a target from one state to another; false when it was not in `from` (someone else moved it), or `lease` is no longer held. */
  async move(id: string, deviceId: string, from: readonly TargetState[], to: TargetState, fields: TargetMoveFields = {}): Promise<boolean> {
    return this.#move(id, deviceId, from, to, fields);
  }

  /** As move, in the caller's transaction. */
  #move(id: string, deviceId: string, from: readonly TargetState[], to: TargetState, fields: TargetMoveFields = {}): boolean {
    const now = this.#s.now();
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
    if (fields.nextAt !== undefined) {
      sets.push('next_at = ?');
      args.push(fields.nextAt);
    }
    const res = this.#s.db
      .prepare(
        `UPDATE rollout_targets SET ${sets.join(', ')} WHERE rollout_id = ? AND device_id = ? AND state IN (${from.map(() => '?').join(',')})${fields.lease ? ` AND ${LEASE_HELD}` : ''}`,
      )
      .run(...args, id, deviceId, ...from, ...(fields.lease ? leaseArgs(fields.lease, now) : []));
    return res.changes === 1;
  }

  /**
   * Takes a pending target for sending (pending -> sending, one more attempt),
   * only while its rollout is running (a pause or cancel committed by another
   * process an instant earlier wins) and while `lease` is held (fencing).
   */
  async claim(id: string, deviceId: string, lease: Lease): Promise<boolean> {
    const now = this.#s.now();
    return (
      this.#s.db
        .prepare(
          `UPDATE rollout_targets SET state = 'sending', attempts = attempts + 1, next_at = NULL, updated_at = ?
           WHERE rollout_id = ? AND device_id = ? AND state = 'pending' AND (SELECT state FROM rollouts WHERE id = ?) = 'running' AND ${LEASE_HELD}`,
        )
        .run(now, id, deviceId, id, ...leaseArgs(lease, now)).changes === 1
    );
  }

  /**
   * A claimed target's command was sealed and recorded: sending -> sent with its
   * jti, in one transaction with the checks that `lease` is still held and that
   * the rollout is still running. Only then may it be published (`sent`).
   * Otherwise the command is voided (never published, never re-published): when
   * the lease was lost, or the target was moved meanwhile, the target is left to
   * the lease's holder (`fenced`); when the rollout was paused, cancelled or
   * aborted while the command was sealed, the target waits again (paused) or is
   * cancelled with E_CANCELLED / E_ABORTED (`stopped`).
   */
  async markSent(id: string, deviceId: string, jti: string, lease: Lease): Promise<'sent' | 'fenced' | 'stopped'> {
    return this.#s.db
      .transaction((): 'sent' | 'fenced' | 'stopped' => {
        const now = this.#s.now();
        const sent =
          this.#s.db
            .prepare(
              `UPDATE rollout_targets SET state = 'sent', jti = ?, sent_at = ?, updated_at = ?
               WHERE rollout_id = ? AND device_id = ? AND state = 'sending' AND (SELECT state FROM rollouts WHERE id = ?) = 'running' AND ${LEASE_HELD}`,
            )
            .run(jti, now, now, id, deviceId, id, ...leaseArgs(lease, now)).changes === 1;
        if (sent) {
          // Proof of life: an engine at work keeps its lease through a long batch.
          renewLease(this.#s.db, lease, now);
          return 'sent';
        }
        const stopped = leaseHeld(this.#s, lease) && this.#stopSending(id, deviceId, now);
        this.#voidCommand(jti, now);
        return stopped ? 'stopped' : 'fenced';
      })
      .immediate();
  }

  /**
   * A target left `sending` of a rollout that is no longer running: it waits
   * again (paused) or is cancelled (cancelled, aborted). False when the rollout
   * is running (or gone) or the target is not `sending`.
   */
  #stopSending(id: string, deviceId: string, now: number): boolean {
    const state = (this.#s.db.prepare('SELECT state FROM rollouts WHERE id = ?').get(id) as { state: RolloutState } | undefined)?.state;
    if (state === undefined || state === 'running') return false;
    const to: TargetState = state === 'paused' ? 'pending' : 'cancelled';
    const code = state === 'paused' ? null : state === 'aborted' ? 'E_ABORTED' : 'E_CANCELLED';
    return (
      this.#s.db
        .prepare(`UPDATE rollout_targets SET state = ?, code = COALESCE(?, code), updated_at = ? WHERE rollout_id = ? AND device_id = ? AND state = 'sending'`)
        .run(to, code, now, id, deviceId).changes === 1
    );
  }

  /** Marks a command never published (no target refers to it, unanswered). */
  #voidCommand(jti: string, now: number): void {
    this.#s.db
      .prepare(
        `UPDATE commands SET voided_at = ? WHERE jti = ? AND ack_status IS NULL AND voided_at IS NULL AND NOT EXISTS (SELECT 1 FROM rollout_targets WHERE jti = ?)`,
      )
      .run(now, jti, jti);
  }

  /**
   * When an engine takes the lease (a new generation): each target its
   * predecessor left `sending` (claimed, never marked sent, so never published
   * by it) adopts the command last recorded for it, when that one is
   * unanswered, not void and still valid (it is then re-published as sealed:
   * same jti and seq); otherwise it waits again. Any other command recorded for
   * it and never published is voided. A target of a rollout paused, cancelled
   * or aborted since adopts nothing: it waits again (paused) or is cancelled.
   * Only under `lease`. Returns how many were adopted and how many were not.
   */
  async reclaimSending(id: string, lease: Lease): Promise<{ adopted: number; requeued: number }> {
    return this.#s.db
      .transaction(() => {
        const now = this.#s.now();
        const out = { adopted: 0, requeued: 0 };
        if (!leaseHeld(this.#s, lease)) return out;
        const sending = this.#s.db.prepare(`SELECT device_id AS deviceId FROM rollout_targets WHERE rollout_id = ? AND state = 'sending'`).all(id) as {
          deviceId: string;
        }[];
        const latest = this.#s.db.prepare(
          `SELECT jti, expires_at AS expiresAt FROM commands WHERE fanout_id = ? AND device_id = ? AND ack_status IS NULL AND voided_at IS NULL
             AND NOT EXISTS (SELECT 1 FROM rollout_targets t WHERE t.jti = commands.jti)
           ORDER BY created_at DESC, seq DESC LIMIT 1`,
        );
        const voidOthers = this.#s.db.prepare(
          `UPDATE commands SET voided_at = ? WHERE fanout_id = ? AND device_id = ? AND ack_status IS NULL AND voided_at IS NULL AND sent_at IS NULL
             AND NOT EXISTS (SELECT 1 FROM rollout_targets t WHERE t.jti = commands.jti)`,
        );
        const running = (this.#s.db.prepare('SELECT state FROM rollouts WHERE id = ?').get(id) as { state: RolloutState } | undefined)?.state === 'running';
        for (const { deviceId } of sending) {
          if (!running) {
            // Paused, cancelled or aborted since it was claimed: nothing of it is published; it waits
            // again (paused) or is cancelled, and what was sealed for it is voided.
            this.#stopSending(id, deviceId, now);
            out.requeued++;
            voidOthers.run(now, id, deviceId);
            continue;
          }
          const c = latest.get(id, deviceId) as { jti: string; expiresAt: number } | undefined;
          if (c && c.expiresAt > now) {
            this.#move(id, deviceId, ['sending'], 'sent', { jti: c.jti, sent: true });
            out.adopted++;
          } else {
            this.#move(id, deviceId, ['sending'], 'pending');
            out.requeued++;
          }
          voidOthers.run(now, id, deviceId);
        }
        return out;
      })
      .immediate();
  }

  /** Sent targets whose command is unanswered and still valid (in flight: at most the concurrency): device and jti. */
  async unansweredValid(id: string, now: number): Promise<{ deviceId: string; jti: string }[]> {
    return this.#s.db
      .prepare(
        `SELECT t.device_id AS deviceId, t.jti AS jti FROM rollout_targets t JOIN commands c ON c.jti = t.jti
         WHERE t.rollout_id = ? AND t.state = 'sent' AND c.ack_status IS NULL AND c.voided_at IS NULL AND c.expires_at > ?`,
      )
      .all(id, now) as { deviceId: string; jti: string }[];
  }

  /**
   * Targets in flight whose command has been answered: the answer, with the
   * command's code, to be settled by the engine.
   */
  async answered(
    id: string,
  ): Promise<{ deviceId: string; jti: string; status: 'applied' | 'rejected' | 'failed' | 'rolled_back'; code: string | null; attempts: number }[]> {
    return this.#s.db
      .prepare(
        `SELECT t.device_id AS deviceId, t.jti AS jti, c.ack_status AS status, c.ack_code AS code, t.attempts AS attempts
         FROM rollout_targets t JOIN commands c ON c.jti = t.jti
         WHERE t.rollout_id = ? AND t.state = 'sent' AND c.ack_status IS NOT NULL`,
      )
      .all(id) as { deviceId: string; jti: string; status: 'applied' | 'rejected' | 'failed' | 'rolled_back'; code: string | null; attempts: number }[];
  }

  /** How many targets are in flight: sent, unanswered, and their command still valid. */
  async inFlight(id: string, now: number): Promise<number> {
    const row = this.#s.db
      .prepare(
        `SELECT (SELECT COUNT(*) FROM rollout_targets WHERE rollout_id = ? AND state = 'sending')
           + (SELECT COUNT(*) FROM rollout_targets t LEFT JOIN commands c ON c.jti = t.jti
              WHERE t.rollout_id = ? AND t.state = 'sent' AND (c.expires_at IS NULL OR c.expires_at > ?)) AS n`,
      )
      .get(id, id, now) as { n: number };
    return row.n;
  }

  /**
   * Sent targets of a device whose command expired unanswered (the board was
   * away), in rollouts that are running (nothing of a paused, cancelled, aborted
   * or finished rollout is published again): their jti. Never an upgrade: its
   * ack comes only once the board decided it (download, install, health gate),
   * long after the command's lifetime, and the new agent's connect report comes
   * before that ack: a copy then would be answered E_EXPIRED (a fresh upgrade
   * to a board mid-upgrade) ahead of the real outcome. An upgrade the board
   * never got waits for the rollout's deadline.
   */
  async unansweredExpired(deviceId: string, now: number): Promise<{ rolloutId: string; jti: string }[]> {
    return this.#s.db
      .prepare(
        `SELECT t.rollout_id AS rolloutId, t.jti AS jti FROM rollout_targets t JOIN commands c ON c.jti = t.jti JOIN rollouts r ON r.id = t.rollout_id
         WHERE t.device_id = ? AND t.state = 'sent' AND c.ack_status IS NULL AND c.voided_at IS NULL AND c.expires_at <= ? AND c.action != 'upgrade'
           AND r.state = 'running' AND r.finished_at IS NULL AND r.deadline_at > ?`,
      )
      .all(deviceId, now, now) as { rolloutId: string; jti: string }[];
  }

  /** Rollouts with a pending target for this device (the engine looks at them first when the device reports in). */
  async pendingFor(deviceId: string): Promise<string[]> {
    return (
      this.#s.db
        .prepare(
          `SELECT t.rollout_id AS id FROM rollout_targets t JOIN rollouts r ON r.id = t.rollout_id
           WHERE t.device_id = ? AND t.state = 'pending' AND r.state = 'running'`,
        )
        .all(deviceId) as { id: string }[]
    ).map((r) => r.id);
  }

  /** Every target not final becomes `expired` (the deadline passed). Returns how many. */
  async expireAll(id: string): Promise<number> {
    const now = this.#s.now();
    return this.#s.db
      .prepare(
        `UPDATE rollout_targets SET state = 'expired', code = COALESCE(code, 'E_DEADLINE'), updated_at = ? WHERE rollout_id = ? AND state IN ('pending', 'sending', 'sent')`,
      )
      .run(now, id).changes;
  }

  /** Pending targets become `cancelled` (the rollout was cancelled or aborted). */
  async cancelPending(id: string, code: string): Promise<number> {
    return this.#cancelPending(id, code);
  }

  /** As cancelPending, in the caller's transaction. */
  #cancelPending(id: string, code: string): number {
    return this.#s.db
      .prepare(`UPDATE rollout_targets SET state = 'cancelled', code = ?, updated_at = ? WHERE rollout_id = ? AND state = 'pending'`)
      .run(code, this.#s.now(), id).changes;
  }

  /**
   * A rollout left `planning` whose heartbeat is older than PLANNING_STALE_MS
   * (the process recording its targets stopped: a crash, Ctrl-C) is finished:
   * cancelled, its pending targets cancelled, nothing sent. Returns the reason
   * when it was finished here, else undefined (still planning live, or not planning).
   */
  async finishInterruptedPlanning(id: string): Promise<string | undefined> {
    return this.#s.db
      .transaction((): string | undefined => {
        const now = this.#s.now();
        const r = this.#get(id);
        if (!r || !r.planning || r.finishedAt !== null || now - r.updatedAt <= PLANNING_STALE_MS) return undefined;
        const recorded = (this.#s.db.prepare('SELECT COUNT(*) AS n FROM rollout_targets WHERE rollout_id = ?').get(id) as { n: number }).n;
        const reason = `planning interrupted: ${recorded} target(s) recorded, nothing sent`;
        this.#s.db
          .prepare(
            "UPDATE rollouts SET planning = 0, state = CASE WHEN state IN ('running', 'paused') THEN 'cancelled' ELSE state END, state_reason = COALESCE(state_reason, ?), updated_at = ? WHERE id = ?",
          )
          .run(reason, now, id);
        this.#cancelPending(id, 'E_CANCELLED');
        this.#finish(id, 'cancelled', reason, now);
        return reason;
      })
      .immediate();
  }

  /** Changes the rollout's state when it is in one of `from`; throws E_ROLLOUT_STATE otherwise. */
  async setState(id: string, from: readonly RolloutState[], to: RolloutState, reason: string, by: string): Promise<RolloutRecord> {
    return this.#s.db
      .transaction(() => {
        const r = this.#require(id);
        if (!from.includes(r.state)) {
          throw new RegistryError(
            'E_ROLLOUT_STATE',
            `rollout ${id} is ${r.state}: it cannot be ${to === 'running' ? 'resumed' : to} (only when ${from.join(' or ')})`,
          );
        }
        const now = this.#s.now();
        this.#s.db.prepare('UPDATE rollouts SET state = ?, state_reason = ?, updated_at = ? WHERE id = ?').run(to, reason, now, id);
        if (to === 'cancelled' || to === 'aborted') this.#cancelPending(id, to === 'cancelled' ? 'E_CANCELLED' : 'E_ABORTED');
        appendAudit(
          this.#s,
          `rollout.${to === 'running' ? 'resume' : to === 'paused' ? 'pause' : to === 'cancelled' ? 'cancel' : to === 'aborted' ? 'abort' : 'complete'}`,
          null,
          {
            rollout_id: id,
            reason,
            by,
          },
        );
        return this.#require(id);
      })
      .immediate();
  }

  /** Marks a rollout finished (nothing pending or in flight is left). */
  async finish(id: string, state: RolloutState, reason: string): Promise<void> {
    this.#s.db.transaction(() => this.#finish(id, state, reason, this.#s.now())).immediate();
  }

  #finish(id: string, state: RolloutState, reason: string, now: number): void {
    this.#s.db
      // A rollout cancelled or aborted meanwhile (another process) ends in that state, not `completed`.
      .prepare(
        `UPDATE rollouts SET state = CASE WHEN state IN ('running', 'paused') THEN ? ELSE state END, state_reason = COALESCE(state_reason, ?),
           finished_at = ?, updated_at = ? WHERE id = ? AND finished_at IS NULL`,
      )
      .run(state, reason, now, now, id);
    const counts = this.#counts(id);
    appendAudit(this.#s, 'rollout.finished', null, { rollout_id: id, state: this.#require(id).state, reason, ...counts });
  }

  /**
   * Counts the devices a selector matches by presence (as presenceOf tells it),
   * and those not sendable, in SQL, PLAN_CHUNK devices at a time with the event
   * loop free in between.
   */
  async summarize(selector: RolloutSelector, needsDeviceUser: boolean, now: number): Promise<PlanSummary> {
    const where = selectorCondition(this.#s.db, selector);
    const chunk = this.#s.db.prepare(
      `SELECT COUNT(*) AS targets, COALESCE(SUM(seen IS NULL), 0) AS unknown, COALESCE(SUM(online), 0) AS online,
         COALESCE(SUM(problem IS NOT NULL), 0) AS notSendable, MAX(id) AS last
       FROM (SELECT d.id AS id, d.last_seen_at AS seen, ${targetProblemSql(needsDeviceUser)} AS problem,
               (d.last_seen_at IS NOT NULL AND d.presence = 'online' AND d.last_seen_at + COALESCE(d.report_interval_s, 0) * ? >= ?) AS online
             FROM devices d WHERE d.id > ? AND ${where.sql} ORDER BY d.id LIMIT ?)`,
    );
    const sum: PlanSummary = { targets: 0, online: 0, offline: 0, unknown: 0, notSendable: 0 };
    let after = '';
    for (;;) {
      const row = chunk.get(PRESENCE_GRACE * 1000, now, after, ...where.args, PLAN_CHUNK) as {
        targets: number;
        unknown: number;
        online: number;
        notSendable: number;
        last: string | null;
      };
      sum.targets += row.targets;
      sum.online += row.online;
      sum.unknown += row.unknown;
      sum.notSendable += row.notSendable;
      if (row.targets < PLAN_CHUNK || row.last === null) break;
      after = row.last;
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    sum.offline = sum.targets - sum.online - sum.unknown;
    return sum;
  }

  /** The ids of the first `limit` devices a selector matches: named devices in their order, the others by id. */
  async sampleIds(selector: RolloutSelector, limit: number): Promise<string[]> {
    if ('devices' in selector) return selector.devices.slice(0, limit);
    const where = selectorCondition(this.#s.db, selector);
    return (this.#s.db.prepare(`SELECT d.id AS id FROM devices d WHERE ${where.sql} ORDER BY d.id LIMIT ?`).all(...where.args, limit) as { id: string }[]).map(
      (r) => r.id,
    );
  }

  /** Targets of `id` in `states` whose device was removed from the registry since. */
  async removedTargets(id: string, states: readonly TargetState[]): Promise<number> {
    return (
      this.#s.db
        .prepare(
          `SELECT COUNT(*) AS n FROM rollout_targets t WHERE t.rollout_id = ? AND t.state IN (${states.map(() => '?').join(',')})
             AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = t.device_id)`,
        )
        .get(id, ...states) as { n: number }
    ).n;
  }

  /** When the rollout last sent a command (null: never). */
  async lastSentAt(id: string): Promise<number | null> {
    return (this.#s.db.prepare('SELECT MAX(sent_at) AS t FROM rollout_targets WHERE rollout_id = ?').get(id) as { t: number | null }).t;
  }
}
