/**
 * Waiting for the ack of a command: resolved by this process's own ack handling,
 * or found in the registry (another `serve` instance may have recorded it).
 */
import type { Logger } from '../../lib/log.js';
import type { CommandRecord } from '../storage/records.js';
import { logStorageError } from '../storage-error.js';
import type { Storage } from '../storage/types.js';

export class AckWaiters {
  readonly #storage: Storage;
  readonly #log: Logger | undefined;
  readonly #waiting = new Map<string, Set<(c: CommandRecord) => void>>();
  readonly #pollMs: number;

  constructor(storage: Storage, options: { pollMs?: number; log?: Logger } = {}) {
    this.#storage = storage;
    this.#log = options.log;
    this.#pollMs = options.pollMs ?? 500;
  }

  /** Call with every recorded ack. */
  notify(command: CommandRecord): void {
    const set = this.#waiting.get(command.jti);
    if (!set) return;
    this.#waiting.delete(command.jti);
    for (const resolve of set) resolve(command);
  }

  /** The command once acked, or undefined after `timeoutMs`. */
  async wait(jti: string, timeoutMs: number): Promise<CommandRecord | undefined> {
    const already = await this.#storage.commands.get(jti);
    if (already?.ackStatus) return already;
    return new Promise((resolve) => {
      let set = this.#waiting.get(jti);
      if (!set) this.#waiting.set(jti, (set = new Set()));
      const done = (c: CommandRecord | undefined): void => {
        clearTimeout(timer);
        clearInterval(poll);
        set.delete(done);
        if (set.size === 0 && this.#waiting.get(jti) === set) this.#waiting.delete(jti);
        resolve(c);
      };
      const timer = setTimeout(() => done(undefined), timeoutMs);
      let polling = false;
      const poll = setInterval(() => {
        if (!this.#storage.open || polling) return;
        polling = true;
        this.#storage.commands
          .get(jti)
          .then((c) => {
            if (c?.ackStatus) done(c);
          })
          .catch((err: unknown) => {
            if (this.#log) logStorageError(this.#log, err, { jti });
          })
          .finally(() => (polling = false));
      }, this.#pollMs);
      set.add(done);
    });
  }

  /** Resolves every waiter with undefined (shutting down). */
  cancelAll(): void {
    for (const [, set] of this.#waiting) for (const resolve of [...set]) (resolve as (c: CommandRecord | undefined) => void)(undefined);
    this.#waiting.clear();
  }
}
