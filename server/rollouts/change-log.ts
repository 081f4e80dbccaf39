/**
 * `serve` logs each rollout's creation and control (create, retry, pause,
 * resume, cancel, abort) whichever process made it: the CLI, the HTTP API or
 * the engine. The audit log is the one record every process writes, so serve
 * follows its `rollout.*` rows (from the newest when it starts) and logs each
 * as one line: `rollout.created rollout=ID action=delete devices=20 ...`.
 * An abort by serve's own engine is not logged twice (the engine logs it).
 */
import type { Logger } from '../../lib/log.js';
import type { Registry } from '../registry/registry.js';

export const CHANGE_LOG_POLL_MS = 1000;

const EVENTS: Readonly<Record<string, { line: string; level: 'info' | 'warn' }>> = {
  'rollout.create': { line: 'rollout.created', level: 'info' },
  'rollout.retry': { line: 'rollout.retry', level: 'info' },
  'rollout.pause': { line: 'rollout.paused', level: 'info' },
  'rollout.resume': { line: 'rollout.resumed', level: 'info' },
  'rollout.cancel': { line: 'rollout.cancelled', level: 'info' },
  'rollout.abort': { line: 'rollout.aborted', level: 'warn' },
};

/** Rollout events logged per poll at most (the rest at the next). */
const POLL_LIMIT = 1000;

export class RolloutChangeLog {
  readonly #registry: Registry;
  readonly #log: Logger;
  readonly #ownHolder: string | undefined;
  readonly #pollMs: number;
  #lastId = 0;
  #timer: NodeJS.Timeout | undefined;

  /** `ownHolder`: the lease holder name of this serve's engine (its aborts are logged by the engine). */
  constructor(registry: Registry, log: Logger, options: { ownHolder?: string; pollMs?: number } = {}) {
    this.#registry = registry;
    this.#log = log;
    this.#ownHolder = options.ownHolder;
    this.#pollMs = options.pollMs ?? CHANGE_LOG_POLL_MS;
  }

  start(): void {
    this.#lastId = (this.#registry.db.prepare('SELECT COALESCE(MAX(id), 0) AS id FROM audit').get() as { id: number }).id;
    this.#timer = setInterval(() => this.poll(), this.#pollMs);
    this.#timer.unref();
  }

  /** Logs the rollout events recorded since the last poll. */
  poll(): void {
    if (!this.#registry.db.open) return;
    // Up to the newest row now, whatever its event: the next poll starts there (the rows between
    // are never read again); the event range uses the audit_event index (LIKE would not).
    const top = (this.#registry.db.prepare('SELECT COALESCE(MAX(id), 0) AS id FROM audit').get() as { id: number }).id;
    const rows = this.#registry.db
      .prepare("SELECT id, event, detail FROM audit WHERE event >= 'rollout.' AND event < 'rollout/' AND id > ? AND id <= ? ORDER BY id LIMIT ?")
      .all(this.#lastId, top, POLL_LIMIT) as { id: number; event: string; detail: string }[];
    this.#lastId = rows.length < POLL_LIMIT ? top : (rows[rows.length - 1] as { id: number }).id;
    for (const row of rows) {
      const e = EVENTS[row.event];
      if (!e) continue;
      const d = JSON.parse(row.detail) as Record<string, unknown>;
      if (row.event === 'rollout.abort' && this.#ownHolder !== undefined && d.by === this.#ownHolder) continue;
      const { rollout_id: rollout, ...rest } = d;
      this.#log[e.level](e.line, { rollout, ...rest });
    }
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
