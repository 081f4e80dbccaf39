/**
 * Rollouts in PostgreSQL: the same rows, states, errors and audit events as
 * the SQLite registry (server/storage/sqlite/rollouts.ts: read its comments for the
 * why of each rule), made race-free across machines sharing one database:
 * - every claim, mark-sent and leased move is one conditional UPDATE whose
 *   WHERE checks the lease (holder, generation, unexpired) and locks its row
 *   FOR SHARE, so a new holder's take (an UPDATE of that row) waits until the
 *   statement's transaction ends, and a take that committed first fails it;
 *   the rollout's `running` state is checked the same way (a pause, cancel or
 *   abort, committed by another machine an instant earlier, wins);
 * - a transaction that reads a row and then writes on what it read locks it
 *   first (SELECT ... FOR UPDATE): setState, finishInterruptedPlanning,
 *   reclaimSending (the targets it adopts or requeues);
 * - rows are locked in one order everywhere (the rollout, the lease, then
 *   targets, then commands), and no transaction turns its share lock of the
 *   lease into an exclusive one (markSent renews the lease after its commit):
 *   concurrent claims and mark-sents on several machines never deadlock;
 * - a selector is resolved inside the database (INSERT ... SELECT in chunks),
 *   never as the fleet's ids in memory.
 */
import { randomUUID } from 'node:crypto';
import { CodedError } from '../../../protocol/index.js';
import { PRESENCE_GRACE } from '../../core/presence.js';
import { RegistryError } from '../errors.js';
import {
  emptyCounts,
  PLAN_CHUNK,
  PLANNING_STALE_MS,
  selectorForAudit,
  TARGET_STATES,
  type Lease,
  type PlanSummary,
  type RolloutRecord,
  type RolloutSelector,
  type RolloutSpec,
  type RolloutState,
  type TargetCounts,
  type TargetRecord,
  type TargetState,
} from '../records.js';
import { rolloutRecord, targetRecord, type RolloutRow, type TargetRow } from '../rows.js';
import { assertTag } from '../rules.js';
import type { CreateFromSelectorOptions, RolloutStore, TargetMoveFields } from '../types.js';
import { appendAudit } from './audit.js';
import type { PgDb, Sql } from './db.js';
import { renewLease } from './leases.js';

type AnsweredStatus = 'applied' | 'rejected' | 'failed' | 'rolled_back';

/** A statement's parameters as it is written: `a.p(value)` appends one and gives its placeholder ($n). */
class Args {
  readonly values: unknown[] = [];
  p(value: unknown): string {
    this.values.push(value);
    return `$${this.values.length}`;
  }
}

/** The condition that `lease` is still held, its row locked (FOR SHARE) until the statement's transaction ends. */
function leaseHeld(a: Args, lease: Lease, now: number): string {
  return `EXISTS (SELECT 1 FROM leases WHERE name = ${a.p(lease.name)} AND holder = ${a.p(lease.holder)} AND generation = ${a.p(lease.generation)}
    AND expires_at > ${a.p(now)} FOR SHARE)`;
}

/** The condition that rollout `id` is running, its row locked (FOR SHARE: a state change waits, or wins when committed first). */
function rolloutRunning(a: Args, id: string): string {
  return `EXISTS (SELECT 1 FROM rollouts WHERE id = ${a.p(id)} AND state = 'running' FOR SHARE)`;
}

/**
 * A target's device `d` (LEFT JOINed: gone is NULL) may be sent to now: online
 * by its reports (the last one within PRESENCE_GRACE x its interval), or never
 * reported.
 */
function reachableNow(a: Args, now: number): string {
  return `(d.id IS NULL OR d.last_seen_at IS NULL OR (d.presence = 'online' AND d.last_seen_at + d.report_interval_s::bigint * 2500 >= ${a.p(now)}::bigint))`;
}

/** A device `d` has a current encryption key (what every command is sealed to). */
const HAS_ENC_KEY = "EXISTS (SELECT 1 FROM device_keys k WHERE k.device_id = d.id AND k.use = 'enc' AND k.status = 'current')";

/**
 * Why a command to device `d` would not be sent, as far as the registry tells
 * (the code, or NULL), as server/storage/sqlite/rollouts.ts targetProblemSql.
 */
export function targetProblemSql(needsDeviceUser: boolean): string {
  return `CASE WHEN d.state = 'decommissioned' THEN 'E_DECOMMISSIONED' WHEN NOT ${HAS_ENC_KEY} THEN 'E_NO_KEY'${
    needsDeviceUser ? " WHEN d.user_id IS NULL THEN 'E_USAGE'" : ''
  } ELSE NULL END`;
}

/**
 * The devices a selector matches, as a condition over `devices d` (its
 * parameters appended to `a` when called), as server/storage/sqlite/rollouts.ts
 * selectorCondition: named devices as named (every unknown one named at once:
 * E_NO_DEVICE), a retry's devices as its targets in those states, the others
 * without the decommissioned devices and those without an encryption key.
 */
export async function selectorCondition(sql: Sql, selector: RolloutSelector): Promise<(a: Args) => string> {
  if ('devices' in selector) {
    const ids = JSON.stringify(selector.devices);
    // Every unknown id is named at once (a list typed or read from a file): nothing is recorded.
    const unknown = (
      await sql.q<{ id: string }>(
        'SELECT v.value AS id FROM jsonb_array_elements_text($1::jsonb) WITH ORDINALITY AS v(value, n) WHERE v.value NOT IN (SELECT id FROM devices) ORDER BY v.n',
        [ids],
      )
    ).map((r) => r.id);
    if (unknown.length === 1) throw new RegistryError('E_NO_DEVICE', `device ${unknown[0]} is not registered`);
    if (unknown.length > 1) {
      const shown = unknown.slice(0, 20).join(', ');
      throw new RegistryError(
        'E_NO_DEVICE',
        `${unknown.length} devices are not registered: ${shown}${unknown.length > 20 ? `, ... (${unknown.length - 20} more)` : ''}`,
      );
    }
    return (a) => `d.id IN (SELECT jsonb_array_elements_text(${a.p(ids)}::jsonb))`;
  }
  if ('retryOf' in selector) {
    // Like named devices (no usability filter: one that cannot be sent to is recorded `not sent` with its code).
    const { retryOf, states } = selector;
    return (a) => `d.id IN (SELECT device_id FROM rollout_targets WHERE rollout_id = ${a.p(retryOf)} AND state = ANY(${a.p(states)}::text[]))`;
  }
  const usable = `d.state != 'decommissioned' AND ${HAS_ENC_KEY}`;
  if ('userId' in selector) {
    const { userId } = selector;
    return (a) => `d.user_id = ${a.p(userId)} AND ${usable}`;
  }
  if ('tag' in selector) {
    // A tag no device can carry is a typo, not an empty selection.
    assertTag(selector.tag);
    const { tag } = selector;
    return (a) => `d.id IN (SELECT device_id FROM device_tags WHERE tag = ${a.p(tag)}) AND ${usable}`;
  }
  return () => usable;
}

const pause = (): Promise<void> => new Promise<void>((resolve) => setImmediate(resolve));

export class PgRolloutStore implements RolloutStore {
  readonly #db: PgDb;
  readonly #now: () => number;

  constructor(db: PgDb, now: () => number) {
    this.#db = db;
    this.#now = now;
  }

  async create(spec: RolloutSpec, deviceIds: readonly string[]): Promise<RolloutRecord> {
    const id = randomUUID();
    const now = this.#now();
    await this.#db.tx(async (sql) => {
      await this.#insertRollout(sql, id, spec, now);
      if (deviceIds.length > 0) {
        await sql.run(
          `INSERT INTO rollout_targets (rollout_id, device_id, state, updated_at)
           SELECT $1, v.id, 'pending', $2::bigint FROM unnest($3::text[]) WITH ORDINALITY AS v(id, n) ORDER BY v.n`,
          [id, now, deviceIds],
        );
      }
      await this.#auditCreate(sql, id, spec, deviceIds.length, now);
      if (deviceIds.length === 0) await this.#finish(sql, id, 'completed', 'no devices matched', now);
    });
    return this.require(id);
  }

  /**
   * Records a rollout with a target per device its selector matches, resolved
   * inside the database: the rollout row first (planning: not driven yet), then
   * the targets in chunks of `chunk` devices (INSERT ... SELECT, one short
   * transaction each with the planning heartbeat), then the rollout is released
   * to the engine. A device the registry tells would not be sent to (see
   * targetProblemSql) is recorded `not sent` with its code. More than
   * `maxTargets` cancels and finishes it before its release: E_CONFIRM.
   */
  async createFromSelector(spec: RolloutSpec, options: CreateFromSelectorOptions): Promise<RolloutRecord> {
    const id = randomUUID();
    const where = await selectorCondition(this.#db, spec.selector);
    const chunk = options.chunk ?? PLAN_CHUNK;
    await this.#db.tx((sql) => this.#insertRollout(sql, id, spec, this.#now(), true, options.retryOf?.id));
    let after = '';
    let total = 0;
    for (;;) {
      const added = await this.#db.tx(async (sql): Promise<{ n: number; last: string | null } | undefined> => {
        const now = this.#now();
        // The planning heartbeat (it also locks the row: finishInterruptedPlanning waits, or wins when first).
        // Finished meanwhile (found interrupted by the engine): nothing more is recorded.
        if ((await sql.run('UPDATE rollouts SET updated_at = $1 WHERE id = $2 AND planning = 1 AND finished_at IS NULL', [now, id])) === 0) return undefined;
        const a = new Args();
        const text = `WITH ins AS (
            INSERT INTO rollout_targets (rollout_id, device_id, state, code, updated_at)
            SELECT ${a.p(id)}::text, s.id, CASE WHEN s.problem IS NULL THEN 'pending' ELSE 'not sent' END, s.problem, ${a.p(now)}::bigint
            FROM (SELECT d.id AS id, ${targetProblemSql(options.needsDeviceUser)} AS problem FROM devices d
                  WHERE d.id > ${a.p(after)}::text AND ${where(a)} ORDER BY d.id LIMIT ${a.p(chunk)}::int) s
            RETURNING device_id)
          SELECT COUNT(*)::int AS n, MAX(device_id) AS last FROM ins`;
        return sql.one<{ n: number; last: string | null }>(text, a.values);
      });
      if (!added) return this.require(id);
      total += added.n;
      if (options.maxTargets !== undefined && total > options.maxTargets) {
        const reason = `refused: the selector now matches more than the ${options.maxTargets} device(s) confirmed (E_CONFIRM); nothing sent`;
        await this.#db.tx(async (sql) => {
          const now = this.#now();
          await sql.run("UPDATE rollouts SET planning = 0, state = 'cancelled', state_reason = $1, updated_at = $2 WHERE id = $3", [reason, now, id]);
          await this.#cancelPending(sql, id, 'E_CONFIRM', now);
          await this.#finish(sql, id, 'cancelled', reason, now);
        });
        throw new CodedError(
          'E_CONFIRM',
          `${spec.action} was confirmed for ${options.maxTargets} device(s), but the selector now matches more: nothing sent (rollout ${id} cancelled); plan and confirm again`,
        );
      }
      if (added.n < chunk || added.last === null) break;
      after = added.last;
      await pause();
    }
    await this.#db.tx(async (sql) => {
      const now = this.#now();
      await sql.run('UPDATE rollouts SET planning = 0, updated_at = $1 WHERE id = $2', [now, id]);
      const r = await this.#require(sql, id);
      // Cancelled or aborted while its targets were recorded: those recorded after are cancelled too.
      if (r.state === 'cancelled' || r.state === 'aborted') await this.#cancelPending(sql, id, r.state === 'cancelled' ? 'E_CANCELLED' : 'E_ABORTED', now);
      await this.#auditCreate(sql, id, spec, total, now, options.by);
      if (options.retryOf) {
        await appendAudit(sql, now, 'rollout.retry', null, {
          rollout_id: id,
          retry_of: options.retryOf.id,
          devices: total,
          in_flight_left_out: options.retryOf.inFlightLeftOut,
          removed_left_out: options.retryOf.removedLeftOut ?? 0,
          ...(options.by !== undefined ? { by: options.by } : {}),
        });
      }
      if (total === 0) await this.#finish(sql, id, 'completed', 'no devices matched', now);
      else if ((await this.#counts(sql, id)).pending === 0 && r.state !== 'cancelled' && r.state !== 'aborted')
        await this.#finish(sql, id, 'completed', 'no target could be sent to', now);
    });
    return this.require(id);
  }

  async #insertRollout(sql: Sql, id: string, spec: RolloutSpec, now: number, planning = false, retryOf?: string): Promise<void> {
    await sql.run(
      `INSERT INTO rollouts (id, created_at, action, params, user_id, selector, ttl_s, deadline_at, rate_per_min, ramp_from, ramp_factor,
             abort_percent, abort_min, concurrency, state, updated_at, planning, retry_of)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'running', $15, $16, $17)`,
      [
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
      ],
    );
  }

  async #auditCreate(sql: Sql, id: string, spec: RolloutSpec, devices: number, now: number, by?: string): Promise<void> {
    await appendAudit(sql, now, 'rollout.create', null, {
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
    return this.#get(this.#db, id);
  }

  async #get(sql: Sql, id: string, lock = false): Promise<RolloutRecord | undefined> {
    const row = await sql.one<RolloutRow>(`SELECT * FROM rollouts WHERE id = $1${lock ? ' FOR UPDATE' : ''}`, [id]);
    return row ? rolloutRecord(row) : undefined;
  }

  require(id: string): Promise<RolloutRecord> {
    return this.#require(this.#db, id);
  }

  async #require(sql: Sql, id: string, lock = false): Promise<RolloutRecord> {
    const r = await this.#get(sql, id, lock);
    if (!r) throw new RegistryError('E_NO_ROLLOUT', `no rollout with id ${id}`);
    return r;
  }

  async list(options: { limit?: number; unfinished?: boolean } = {}): Promise<RolloutRecord[]> {
    const rows = await this.#db.q<RolloutRow>(
      `SELECT * FROM rollouts ${options.unfinished ? 'WHERE finished_at IS NULL' : ''} ORDER BY created_at DESC, id LIMIT $1`,
      [options.limit ?? 100],
    );
    return rows.map(rolloutRecord);
  }

  counts(id: string): Promise<TargetCounts> {
    return this.#counts(this.#db, id);
  }

  async #counts(sql: Sql, id: string): Promise<TargetCounts> {
    const counts = emptyCounts();
    for (const r of await sql.q<{ state: TargetState; n: number }>(
      'SELECT state, COUNT(*)::int AS n FROM rollout_targets WHERE rollout_id = $1 GROUP BY state',
      [id],
    ))
      counts[r.state] = r.n;
    return counts;
  }

  async targets(id: string, options: { states?: readonly TargetState[]; limit?: number } = {}): Promise<TargetRecord[]> {
    const rows = await this.#db.q<TargetRow>('SELECT * FROM rollout_targets WHERE rollout_id = $1 AND state = ANY($2::text[]) ORDER BY device_id LIMIT $3', [
      id,
      options.states ?? TARGET_STATES,
      options.limit ?? 1_000_000,
    ]);
    return rows.map(targetRecord);
  }

  /** Pending targets whose device may be sent to now (REACHABLE_NOW), not held back by a re-send backoff (next_at). */
  async deliverable(id: string, now: number, limit: number): Promise<TargetRecord[]> {
    if (limit <= 0) return [];
    const a = new Args();
    const text = `SELECT t.* FROM rollout_targets t LEFT JOIN devices d ON d.id = t.device_id
       WHERE t.rollout_id = ${a.p(id)} AND t.state = 'pending' AND (t.next_at IS NULL OR t.next_at <= ${a.p(now)}::bigint)
         AND ${reachableNow(a, now)}
       ORDER BY t.attempts, t.device_id LIMIT ${a.p(limit)}::int`;
    return (await this.#db.q<TargetRow>(text, a.values)).map(targetRecord);
  }

  /** The pending targets counted as `deliverable` tells them apart: in a re-send backoff (with its earliest end), deliverable now, or offline. */
  async pendingBreakdown(id: string, now: number): Promise<{ deliverable: number; backoff: number; offline: number; backoffUntil: number | null }> {
    const a = new Args();
    const text = `SELECT COUNT(*)::int AS pending, COUNT(*) FILTER (WHERE t.next_at > ${a.p(now)}::bigint)::int AS backoff,
         MIN(t.next_at) FILTER (WHERE t.next_at > ${a.p(now)}::bigint) AS "backoffUntil",
         COUNT(*) FILTER (WHERE (t.next_at IS NULL OR t.next_at <= ${a.p(now)}::bigint) AND ${reachableNow(a, now)})::int AS deliverable
       FROM rollout_targets t LEFT JOIN devices d ON d.id = t.device_id WHERE t.rollout_id = ${a.p(id)} AND t.state = 'pending'`;
    const row = (await this.#db.one<{ pending: number; backoff: number; backoffUntil: number | null; deliverable: number }>(text, a.values)) as {
      pending: number;
      backoff: number;
      backoffUntil: number | null;
      deliverable: number;
    };
    return {
      deliverable: row.deliverable,
      backoff: row.backoff,
      offline: row.pending - row.deliverable - row.backoff,
      backoffUntil: row.backoffUntil === null ? null : Number(row.backoffUntil),
    };
  }

  /** Moves a target from one state to another; false when it was not in `from` (someone else moved it), or `lease` is no longer held. */
  async move(id: string, deviceId: string, from: readonly TargetState[], to: TargetState, fields: TargetMoveFields = {}): Promise<boolean> {
    return this.#move(this.#db, id, deviceId, from, to, fields, this.#now());
  }

  async #move(sql: Sql, id: string, deviceId: string, from: readonly TargetState[], to: TargetState, fields: TargetMoveFields, now: number): Promise<boolean> {
    const a = new Args();
    const sets = [`state = ${a.p(to)}`, `updated_at = ${a.p(now)}::bigint`];
    if (fields.jti !== undefined) sets.push(`jti = ${a.p(fields.jti)}::text`);
    if (fields.code !== undefined) sets.push(`code = ${a.p(fields.code)}::text`);
    if (fields.sent) sets.push(`sent_at = ${a.p(now)}::bigint`);
    if (fields.attempt) sets.push('attempts = attempts + 1');
    if (fields.nextAt !== undefined) sets.push(`next_at = ${a.p(fields.nextAt)}::bigint`);
    const text = `UPDATE rollout_targets SET ${sets.join(', ')}
       WHERE rollout_id = ${a.p(id)} AND device_id = ${a.p(deviceId)} AND state = ANY(${a.p(from)}::text[])${fields.lease ? ` AND ${leaseHeld(a, fields.lease, now)}` : ''}`;
    return (await sql.run(text, a.values)) === 1;
  }

  /**
   * Takes a pending target for sending (pending -> sending, one more attempt),
   * only while its rollout is running and while `lease` is held (fencing), in
   * one statement.
   */
  async claim(id: string, deviceId: string, lease: Lease): Promise<boolean> {
    const now = this.#now();
    const a = new Args();
    const text = `UPDATE rollout_targets SET state = 'sending', attempts = attempts + 1, next_at = NULL, updated_at = ${a.p(now)}::bigint
       WHERE rollout_id = ${a.p(id)} AND device_id = ${a.p(deviceId)} AND state = 'pending' AND ${rolloutRunning(a, id)} AND ${leaseHeld(a, lease, now)}`;
    return (await this.#db.run(text, a.values)) === 1;
  }

  /**
   * A claimed target's command was sealed and recorded: sending -> sent with
   * its jti, with the checks that `lease` is held and the rollout running, in
   * one transaction (then the lease is renewed: proof of life). Otherwise the
   * command is voided: `fenced` (the lease was lost, or the target moved), or
   * `stopped` (paused: the target waits again; cancelled/aborted: cancelled).
   */
  async markSent(id: string, deviceId: string, jti: string, lease: Lease): Promise<'sent' | 'fenced' | 'stopped'> {
    const outcome = await this.#db.tx(async (sql): Promise<'sent' | 'fenced' | 'stopped'> => {
      const now = this.#now();
      const a = new Args();
      const text = `UPDATE rollout_targets SET state = 'sent', jti = ${a.p(jti)}, sent_at = ${a.p(now)}::bigint, updated_at = ${a.p(now)}::bigint
         WHERE rollout_id = ${a.p(id)} AND device_id = ${a.p(deviceId)} AND state = 'sending' AND ${rolloutRunning(a, id)} AND ${leaseHeld(a, lease, now)}`;
      if ((await sql.run(text, a.values)) === 1) return 'sent';
      const stopped = (await this.#leaseHeld(sql, lease, now)) && (await this.#stopSending(sql, id, deviceId, now));
      await this.#voidCommand(sql, jti, now);
      return stopped ? 'stopped' : 'fenced';
    });
    if (outcome === 'sent') {
      // Proof of life: an engine at work keeps its lease through a long batch. After the commit, on
      // its own: inside, it would turn this transaction's share lock of the lease row into an
      // exclusive one while other mark-sents hold theirs (a deadlock). Best effort: the engine
      // checks (and renews) its lease again right before publishing; a failure here changes nothing.
      await renewLease(this.#db, lease, this.#now()).catch(() => false);
    }
    return outcome;
  }

  async #leaseHeld(sql: Sql, lease: Lease, now: number): Promise<boolean> {
    const a = new Args();
    const row = await sql.one<{ held: boolean }>(`SELECT ${leaseHeld(a, lease, now)} AS held`, a.values);
    return row?.held === true;
  }

  /**
   * A target left `sending` of a rollout that is no longer running: it waits
   * again (paused) or is cancelled (E_ABORTED / E_CANCELLED), in one statement.
   * False when the rollout is running (or gone) or the target is not `sending`.
   */
  async #stopSending(sql: Sql, id: string, deviceId: string, now: number): Promise<boolean> {
    return (
      (await sql.run(
        `UPDATE rollout_targets t SET state = CASE WHEN r.state = 'paused' THEN 'pending' ELSE 'cancelled' END,
           code = COALESCE(CASE WHEN r.state = 'paused' THEN NULL WHEN r.state = 'aborted' THEN 'E_ABORTED' ELSE 'E_CANCELLED' END, t.code), updated_at = $1
         FROM rollouts r WHERE r.id = t.rollout_id AND t.rollout_id = $2 AND t.device_id = $3 AND t.state = 'sending' AND r.state != 'running'`,
        [now, id, deviceId],
      )) === 1
    );
  }

  /** Marks a command never published (no target refers to it, unanswered). */
  async #voidCommand(sql: Sql, jti: string, now: number): Promise<void> {
    await sql.run(
      `UPDATE commands SET voided_at = $1 WHERE jti = $2 AND ack_status IS NULL AND voided_at IS NULL AND NOT EXISTS (SELECT 1 FROM rollout_targets WHERE jti = $2)`,
      [now, jti],
    );
  }

  /**
   * When an engine takes the lease (a new generation): each target its
   * predecessor left `sending` adopts the command last recorded for it when
   * that one is unanswered, not void and still valid, otherwise waits again;
   * any other command recorded for it and never published is voided. A target
   * of a rollout no longer running adopts nothing (waits again or is
   * cancelled). Only under `lease` (locked FOR SHARE: no new holder meanwhile).
   */
  async reclaimSending(id: string, lease: Lease): Promise<{ adopted: number; requeued: number }> {
    return this.#db.tx(async (sql) => {
      const now = this.#now();
      const out = { adopted: 0, requeued: 0 };
      // Rows locked in the order every statement here takes them: the rollout, the lease, then targets.
      const running = (await sql.one<{ state: RolloutState }>('SELECT state FROM rollouts WHERE id = $1 FOR SHARE', [id]))?.state === 'running';
      if (!(await this.#leaseHeld(sql, lease, now))) return out;
      const sending = await sql.q<{ device_id: string }>(
        "SELECT device_id FROM rollout_targets WHERE rollout_id = $1 AND state = 'sending' ORDER BY device_id FOR UPDATE",
        [id],
      );
      for (const { device_id: deviceId } of sending) {
        if (!running) {
          // Paused, cancelled or aborted since it was claimed: nothing of it is published.
          await this.#stopSending(sql, id, deviceId, now);
          out.requeued++;
        } else {
          const c = await sql.one<{ jti: string; expires_at: number }>(
            `SELECT jti, expires_at FROM commands WHERE fanout_id = $1 AND device_id = $2 AND ack_status IS NULL AND voided_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM rollout_targets t WHERE t.jti = commands.jti)
             ORDER BY created_at DESC, seq DESC LIMIT 1`,
            [id, deviceId],
          );
          if (c && Number(c.expires_at) > now) {
            await this.#move(sql, id, deviceId, ['sending'], 'sent', { jti: c.jti, sent: true }, now);
            out.adopted++;
          } else {
            await this.#move(sql, id, deviceId, ['sending'], 'pending', {}, now);
            out.requeued++;
          }
        }
        await sql.run(
          `UPDATE commands SET voided_at = $1 WHERE fanout_id = $2 AND device_id = $3 AND ack_status IS NULL AND voided_at IS NULL AND sent_at IS NULL
             AND NOT EXISTS (SELECT 1 FROM rollout_targets t WHERE t.jti = commands.jti)`,
          [now, id, deviceId],
        );
      }
      return out;
    });
  }

  /** Sent targets whose command is unanswered and still valid: device and jti. */
  unansweredValid(id: string, now: number): Promise<{ deviceId: string; jti: string }[]> {
    return this.#db.q<{ deviceId: string; jti: string }>(
      `SELECT t.device_id AS "deviceId", t.jti AS jti FROM rollout_targets t JOIN commands c ON c.jti = t.jti
       WHERE t.rollout_id = $1 AND t.state = 'sent' AND c.ack_status IS NULL AND c.voided_at IS NULL AND c.expires_at > $2`,
      [id, now],
    );
  }

  /** Targets in flight whose command has been answered: the answer, with the command's code. */
  answered(id: string): Promise<{ deviceId: string; jti: string; status: AnsweredStatus; code: string | null; attempts: number }[]> {
    return this.#db.q<{ deviceId: string; jti: string; status: AnsweredStatus; code: string | null; attempts: number }>(
      `SELECT t.device_id AS "deviceId", t.jti AS jti, c.ack_status AS status, c.ack_code AS code, t.attempts AS attempts
       FROM rollout_targets t JOIN commands c ON c.jti = t.jti
       WHERE t.rollout_id = $1 AND t.state = 'sent' AND c.ack_status IS NOT NULL`,
      [id],
    );
  }

  /** How many targets are in flight: sending, or sent with the command still valid. */
  async inFlight(id: string, now: number): Promise<number> {
    const row = await this.#db.one<{ n: number }>(
      `SELECT ((SELECT COUNT(*) FROM rollout_targets WHERE rollout_id = $1 AND state = 'sending')
         + (SELECT COUNT(*) FROM rollout_targets t LEFT JOIN commands c ON c.jti = t.jti
            WHERE t.rollout_id = $1 AND t.state = 'sent' AND (c.expires_at IS NULL OR c.expires_at > $2)))::int AS n`,
      [id, now],
    );
    return row?.n ?? 0;
  }

  /** Sent targets of a device whose command expired unanswered, in running rollouts, never an upgrade: their jti. */
  unansweredExpired(deviceId: string, now: number): Promise<{ rolloutId: string; jti: string }[]> {
    return this.#db.q<{ rolloutId: string; jti: string }>(
      `SELECT t.rollout_id AS "rolloutId", t.jti AS jti FROM rollout_targets t JOIN commands c ON c.jti = t.jti JOIN rollouts r ON r.id = t.rollout_id
       WHERE t.device_id = $1 AND t.state = 'sent' AND c.ack_status IS NULL AND c.voided_at IS NULL AND c.expires_at <= $2 AND c.action != 'upgrade'
         AND r.state = 'running' AND r.finished_at IS NULL AND r.deadline_at > $2`,
      [deviceId, now],
    );
  }

  /** Running rollouts with a pending target for this device. */
  async pendingFor(deviceId: string): Promise<string[]> {
    return (
      await this.#db.q<{ id: string }>(
        `SELECT t.rollout_id AS id FROM rollout_targets t JOIN rollouts r ON r.id = t.rollout_id
         WHERE t.device_id = $1 AND t.state = 'pending' AND r.state = 'running'`,
        [deviceId],
      )
    ).map((r) => r.id);
  }

  /** Every target not final becomes `expired` (the deadline passed). Returns how many. */
  expireAll(id: string): Promise<number> {
    return this.#db.run(
      `UPDATE rollout_targets SET state = 'expired', code = COALESCE(code, 'E_DEADLINE'), updated_at = $1 WHERE rollout_id = $2 AND state IN ('pending', 'sending', 'sent')`,
      [this.#now(), id],
    );
  }

  /** Pending targets become `cancelled` (the rollout was cancelled or aborted). */
  cancelPending(id: string, code: string): Promise<number> {
    return this.#cancelPending(this.#db, id, code, this.#now());
  }

  #cancelPending(sql: Sql, id: string, code: string, now: number): Promise<number> {
    return sql.run(`UPDATE rollout_targets SET state = 'cancelled', code = $1, updated_at = $2 WHERE rollout_id = $3 AND state = 'pending'`, [code, now, id]);
  }

  /**
   * A rollout left `planning` whose heartbeat is older than PLANNING_STALE_MS is
   * finished: cancelled, its pending targets cancelled, nothing sent. Returns
   * the reason when it was finished here, else undefined.
   */
  finishInterruptedPlanning(id: string): Promise<string | undefined> {
    return this.#db.tx(async (sql): Promise<string | undefined> => {
      const now = this.#now();
      const r = await this.#get(sql, id, true);
      if (!r || !r.planning || r.finishedAt !== null || now - r.updatedAt <= PLANNING_STALE_MS) return undefined;
      const recorded = (await sql.one<{ n: number }>('SELECT COUNT(*)::int AS n FROM rollout_targets WHERE rollout_id = $1', [id]))?.n ?? 0;
      const reason = `planning interrupted: ${recorded} target(s) recorded, nothing sent`;
      await sql.run(
        "UPDATE rollouts SET planning = 0, state = CASE WHEN state IN ('running', 'paused') THEN 'cancelled' ELSE state END, state_reason = COALESCE(state_reason, $1), updated_at = $2 WHERE id = $3",
        [reason, now, id],
      );
      await this.#cancelPending(sql, id, 'E_CANCELLED', now);
      await this.#finish(sql, id, 'cancelled', reason, now);
      return reason;
    });
  }

  /** Changes the rollout's state when it is in one of `from` (read under a row lock); E_ROLLOUT_STATE otherwise. */
  setState(id: string, from: readonly RolloutState[], to: RolloutState, reason: string, by: string): Promise<RolloutRecord> {
    return this.#db.tx(async (sql) => {
      const r = await this.#require(sql, id, true);
      if (!from.includes(r.state)) {
        throw new RegistryError(
          'E_ROLLOUT_STATE',
          `rollout ${id} is ${r.state}: it cannot be ${to === 'running' ? 'resumed' : to} (only when ${from.join(' or ')})`,
        );
      }
      const now = this.#now();
      await sql.run('UPDATE rollouts SET state = $1, state_reason = $2, updated_at = $3 WHERE id = $4', [to, reason, now, id]);
      if (to === 'cancelled' || to === 'aborted') await this.#cancelPending(sql, id, to === 'cancelled' ? 'E_CANCELLED' : 'E_ABORTED', now);
      await appendAudit(
        sql,
        now,
        `rollout.${to === 'running' ? 'resume' : to === 'paused' ? 'pause' : to === 'cancelled' ? 'cancel' : to === 'aborted' ? 'abort' : 'complete'}`,
        null,
        { rollout_id: id, reason, by },
      );
      return this.#require(sql, id);
    });
  }

  /** Marks a rollout finished (nothing pending or in flight is left). */
  async finish(id: string, state: RolloutState, reason: string): Promise<void> {
    await this.#db.tx((sql) => this.#finish(sql, id, state, reason, this.#now()));
  }

  async #finish(sql: Sql, id: string, state: RolloutState, reason: string, now: number): Promise<void> {
    // A rollout cancelled or aborted meanwhile (another process) ends in that state, not `completed`.
    const row = await sql.one<{ state: RolloutState }>(
      `UPDATE rollouts SET state = CASE WHEN state IN ('running', 'paused') THEN $1 ELSE state END, state_reason = COALESCE(state_reason, $2),
         finished_at = $3, updated_at = $3 WHERE id = $4 AND finished_at IS NULL RETURNING state`,
      [state, reason, now, id],
    );
    const counts = await this.#counts(sql, id);
    const final = row?.state ?? (await this.#require(sql, id)).state;
    await appendAudit(sql, now, 'rollout.finished', null, { rollout_id: id, state: final, reason, ...counts });
  }

  /** The plan's counts of what a selector matches, by presence, PLAN_CHUNK devices per statement. */
  async summarize(selector: RolloutSelector, needsDeviceUser: boolean, now: number): Promise<PlanSummary> {
    const where = await selectorCondition(this.#db, selector);
    const sum: PlanSummary = { targets: 0, online: 0, offline: 0, unknown: 0, notSendable: 0 };
    let after = '';
    for (;;) {
      const a = new Args();
      const text = `SELECT COUNT(*)::int AS targets, COUNT(*) FILTER (WHERE s.seen IS NULL)::int AS unknown, COUNT(*) FILTER (WHERE s.online)::int AS online,
           COUNT(*) FILTER (WHERE s.problem IS NOT NULL)::int AS "notSendable", MAX(s.id) AS last
         FROM (SELECT d.id AS id, d.last_seen_at AS seen, ${targetProblemSql(needsDeviceUser)} AS problem,
                 (d.last_seen_at IS NOT NULL AND d.presence = 'online'
                   AND d.last_seen_at + COALESCE(d.report_interval_s, 0) * ${a.p(PRESENCE_GRACE * 1000)}::float8 >= ${a.p(now)}::bigint) AS online
               FROM devices d WHERE d.id > ${a.p(after)}::text AND ${where(a)} ORDER BY d.id LIMIT ${a.p(PLAN_CHUNK)}::int) s`;
      const row = (await this.#db.one<{ targets: number; unknown: number; online: number; notSendable: number; last: string | null }>(text, a.values)) as {
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
      await pause();
    }
    sum.offline = sum.targets - sum.online - sum.unknown;
    return sum;
  }

  /** The first `limit` device ids a selector matches: named devices in their order, the others by id. */
  async sampleIds(selector: RolloutSelector, limit: number): Promise<string[]> {
    if ('devices' in selector) return selector.devices.slice(0, limit);
    const where = await selectorCondition(this.#db, selector);
    const a = new Args();
    const text = `SELECT d.id AS id FROM devices d WHERE ${where(a)} ORDER BY d.id LIMIT ${a.p(limit)}::int`;
    return (await this.#db.q<{ id: string }>(text, a.values)).map((r) => r.id);
  }

  /** Targets of `id` in `states` whose device was removed from the registry since. */
  async removedTargets(id: string, states: readonly TargetState[]): Promise<number> {
    const row = await this.#db.one<{ n: number }>(
      `SELECT COUNT(*)::int AS n FROM rollout_targets t WHERE t.rollout_id = $1 AND t.state = ANY($2::text[])
         AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = t.device_id)`,
      [id, states],
    );
    return row?.n ?? 0;
  }

  /** When the rollout last sent a command (null: never). */
  async lastSentAt(id: string): Promise<number | null> {
    const row = await this.#db.one<{ t: number | null }>('SELECT MAX(sent_at) AS t FROM rollout_targets WHERE rollout_id = $1', [id]);
    return row?.t === null || row?.t === undefined ? null : Number(row.t);
  }
}
