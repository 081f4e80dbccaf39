/**
 * `serve` logs each rollout's creation and control (create, retry, pause,
 * resume, cancel, abort) whichever process made it: the CLI, the HTTP API or
 * the engine. The audit log is the one record every process writes, so serve
 * follows its `rollout.*` rows (from the newest when it starts) and logs each
 * as one line: `rollout.created rollout=ID action=delete devices=20 ...`.
 * An abort by serve's own engine is not logged twice (the engine logs it).
 */
import type { Logger } from '../../lib/log.js';
import { logStorageError } from '../storage-error.js';
import type { Storage } from '../storage/types.js';

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
  readonly #storage: Storage;
  readonly #log: Logger;
  readonly #ownHolder: string | undefined;
  readonly #pollMs: number;
  #lastId = 0;
  #timer: NodeJS.Timeout | undefined;
  #polling: Promise<void> | undefined;

  /** `ownHolder`: the lease holder name of this serve's engine (its aborts are logged by the engine). */
  constructor(storage: Storage, log: Logger, options: { ownHolder?: string; pollMs?: number } = {}) {
    this.#storage = storage;
    this.#log = log;
    this.#ownHolder = options.ownHolder;
    this.#pollMs = options.pollMs ?? CHANGE_LOG_POLL_MS;
  }

  /** Follows from the newest audit row now (a storage error: logged, then from the first poll that reads it). */
  async start(): Promise<void> {
    try {
      this.#lastId = await this.#storage.audit.lastId();
    } catch (err) {
      logStorageError(this.#log, err, { in: 'rollout.change_log' });
    }
    this.#timer = setInterval(() => void this.poll(), this.#pollMs);
    this.#timer.unref();
  }

  /** Logs the rollout events recorded since the last poll (one poll at a time; a storage error is logged, never thrown). */
  poll(): Promise<void> {
    this.#polling ??= this.#poll()
      .catch((err: unknown) => logStorageError(this.#log, err, { in: 'rollout.change_log' }))
      .finally(() => (this.#polling = undefined));
    return this.#polling;
  }

  async #poll(): Promise<void> {
    if (!this.#storage.open) return;
    // Up to the newest row now, whatever its event: the next poll starts there (the rows between
    // are never read again).
    const top = await this.#storage.audit.lastId();
    const rows = await this.#storage.audit.eventsSince(this.#lastId, top, 'rollout.', POLL_LIMIT);
    this.#lastId = rows.length < POLL_LIMIT ? top : (rows[rows.length - 1] as { id: number }).id;
    for (const row of rows) {
      const e = EVENTS[row.event];
      if (!e) continue;
      const d = row.detail;
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
