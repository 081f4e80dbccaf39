/**
 * Waiting for the ack of a command: resolved by this process's own ack handling,
 * or found in the registry (another `serve` instance may have recorded it).
 */
import type { Registry } from './registry/registry.js';
import type { CommandRecord } from './registry/types.js';

export class AckWaiters {
  readonly #registry: Registry;
  readonly #waiting = new Map<string, Set<(c: CommandRecord) => void>>();
  readonly #pollMs: number;

  constructor(registry: Registry, options: { pollMs?: number } = {}) {
    this.#registry = registry;
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
  wait(jti: string, timeoutMs: number): Promise<CommandRecord | undefined> {
    const already = this.#registry.getCommand(jti);
    if (already?.ackStatus) return Promise.resolve(already);
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
      const poll = setInterval(() => {
        if (!this.#registry.db.open) return;
        const c = this.#registry.getCommand(jti);
        if (c?.ackStatus) done(c);
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
