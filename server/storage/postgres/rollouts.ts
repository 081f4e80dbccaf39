/** PLACEHOLDER (pg-core): the PostgreSQL RolloutStore is written by the pg-rollouts helper, which replaces this file. */
import { RegistryError } from '../../registry/errors.js';
import type { RolloutStore } from '../types.js';
import type { PgDb } from './db.js';

function notImplemented(): Promise<never> {
  return Promise.reject(new RegistryError('E_STORAGE_UNAVAILABLE', 'not implemented'));
}

export class PgRolloutStore implements RolloutStore {
  readonly #db: PgDb;
  readonly #now: () => number;

  constructor(db: PgDb, now: () => number) {
    this.#db = db;
    this.#now = now;
    void this.#db;
    void this.#now;
  }

  create(): Promise<never> {
    return notImplemented();
  }

  createFromSelector(): Promise<never> {
    return notImplemented();
  }

  get(): Promise<never> {
    return notImplemented();
  }

  require(): Promise<never> {
    return notImplemented();
  }

  list(): Promise<never> {
    return notImplemented();
  }

  counts(): Promise<never> {
    return notImplemented();
  }

  targets(): Promise<never> {
    return notImplemented();
  }

  deliverable(): Promise<never> {
    return notImplemented();
  }

  pendingBreakdown(): Promise<never> {
    return notImplemented();
  }

  move(): Promise<never> {
    return notImplemented();
  }

  claim(): Promise<never> {
    return notImplemented();
  }

  markSent(): Promise<never> {
    return notImplemented();
  }

  reclaimSending(): Promise<never> {
    return notImplemented();
  }

  unansweredValid(): Promise<never> {
    return notImplemented();
  }

  answered(): Promise<never> {
    return notImplemented();
  }

  inFlight(): Promise<never> {
    return notImplemented();
  }

  unansweredExpired(): Promise<never> {
    return notImplemented();
  }

  pendingFor(): Promise<never> {
    return notImplemented();
  }

  expireAll(): Promise<never> {
    return notImplemented();
  }

  cancelPending(): Promise<never> {
    return notImplemented();
  }

  finishInterruptedPlanning(): Promise<never> {
    return notImplemented();
  }

  setState(): Promise<never> {
    return notImplemented();
  }

  finish(): Promise<never> {
    return notImplemented();
  }

  summarize(): Promise<never> {
    return notImplemented();
  }

  sampleIds(): Promise<never> {
    return notImplemented();
  }

  removedTargets(): Promise<never> {
    return notImplemented();
  }

  lastSentAt(): Promise<never> {
    return notImplemented();
  }
}
