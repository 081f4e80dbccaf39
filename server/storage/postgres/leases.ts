/** PLACEHOLDER (pg-core): the PostgreSQL LeaseStore is written by the pg-rollouts helper, which replaces this file. */
import { RegistryError } from '../../registry/errors.js';
import type { LeaseStore } from '../types.js';
import type { PgDb } from './db.js';

function notImplemented(): Promise<never> {
  return Promise.reject(new RegistryError('E_STORAGE_UNAVAILABLE', 'not implemented'));
}

export class PgLeaseStore implements LeaseStore {
  readonly #db: PgDb;
  readonly #now: () => number;

  constructor(db: PgDb, now: () => number) {
    this.#db = db;
    this.#now = now;
    void this.#db;
    void this.#now;
  }

  take(): Promise<never> {
    return notImplemented();
  }

  renew(): Promise<never> {
    return notImplemented();
  }

  release(): Promise<never> {
    return notImplemented();
  }

  holder(): Promise<never> {
    return notImplemented();
  }
}
