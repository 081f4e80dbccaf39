/**
 * A storage error met by a timer or an event handler (engine tick, change-log
 * poll, report intake, ack waiters, chunk server): logged and gone past, never
 * an unhandled rejection (a lost PostgreSQL connection must not crash serve).
 */
import { isCodedError } from '../protocol/index.js';
import type { Logger } from '../lib/log.js';

/** Logs `storage.error` with the error's code and message (and `fields`). */
export function logStorageError(log: Logger, err: unknown, fields: Record<string, unknown> = {}): void {
  log.warn('storage.error', { ...fields, code: isCodedError(err) ? err.code : 'E_INTERNAL', message: err instanceof Error ? err.message : String(err) });
}
