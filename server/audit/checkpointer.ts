/**
 * serve's periodic audit checkpoint (--audit-checkpoint-interval): every
 * `intervalMs`, the chain's head is signed and stored when it moved since the
 * last checkpoint (server/audit/registry-audit.ts makeCheckpoint). A failure is
 * logged and tried again at the next tick.
 */
import { isCodedError } from '../../protocol/index.js';
import type { Logger } from '../../lib/log.js';
import type { ServerKeys } from '../keys/server-keys.js';
import type { Storage } from '../storage/types.js';
import { makeCheckpoint } from './registry-audit.js';

export const DEFAULT_AUDIT_CHECKPOINT_MS = 10 * 60_000;

export class AuditCheckpointer {
  readonly #timer: NodeJS.Timeout;
  #running: Promise<void> | undefined;

  constructor(
    private readonly deps: { storage: Storage; keys: ServerKeys; log: Logger; now?: () => number },
    intervalMs: number,
  ) {
    this.#timer = setInterval(() => void this.tick(), intervalMs);
    this.#timer.unref();
  }

  /** One checkpoint now (if the head moved); resolves when stored (or refused). */
  tick(): Promise<void> {
    this.#running ??= this.#checkpoint().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  async #checkpoint(): Promise<void> {
    const { storage, keys, log } = this.deps;
    try {
      const { checkpoint: c, created } = await makeCheckpoint(storage, keys, (this.deps.now ?? Date.now)());
      if (created) log.info('audit.checkpoint', { id: c.id, last_id: c.lastId, hash: c.hash });
    } catch (err) {
      if (isCodedError(err) && err.code === 'E_AUDIT_EMPTY') return;
      log.warn('audit.checkpoint_failed', { reason: err instanceof Error ? err.message : String(err) });
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#running;
  }
}
