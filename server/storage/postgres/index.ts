/**
 * The registry in PostgreSQL (node-postgres `pg`): several `serve` processes,
 * on several machines, sharing one fleet. openPostgresStorage connects,
 * migrates (once, whoever opens first: schema.ts) and returns the Storage.
 */
import type pg from 'pg';
import type {
  AuditStore,
  CommandStore,
  DeviceStore,
  EnrollmentStore,
  LeaseStore,
  OperatorStore,
  ReleaseStore,
  RolloutStore,
  SeqStore,
  Storage,
  StorageInfo,
} from '../types.js';
import { PgAuditStore } from './audit.js';
import { PgCommandStore } from './commands.js';
import { PgDb, type PgLog } from './db.js';
import { PgDeviceStore } from './devices.js';
import { PgEnrollmentStore } from './enrollment.js';
import { PgLeaseStore } from './leases.js';
import { PgOperatorStore } from './operators.js';
import { PgReleaseStore } from './releases.js';
import { PgRolloutStore } from './rollouts.js';
import { migratePostgres } from './schema.js';
import { PgSeqStore } from './seq.js';

export { PgDb } from './db.js';

export interface PostgresStorageOptions {
  /** Create the registry schema in an empty database (without: E_NO_REGISTRY for one that has none). */
  create?: boolean;
  now?: () => number;
  /** Where the pool's connection errors are logged. */
  log?: PgLog;
  /** Pool size (default 10). */
  max?: number;
}

export class PostgresStorage implements Storage {
  readonly info: StorageInfo;
  readonly db: PgDb;
  readonly pool: pg.Pool;
  readonly devices: DeviceStore;
  readonly enrollment: EnrollmentStore;
  readonly seq: SeqStore;
  readonly commands: CommandStore;
  readonly rollouts: RolloutStore;
  readonly leases: LeaseStore;
  readonly audit: AuditStore;
  readonly releases: ReleaseStore;
  readonly operators: OperatorStore;
  readonly #now: () => number;
  #open = true;
  #closing: Promise<void> | undefined;

  constructor(db: PgDb, now: () => number) {
    this.db = db;
    this.pool = db.pool;
    this.#now = now;
    this.info = { kind: 'postgres', location: db.location };
    this.devices = new PgDeviceStore(db, now);
    this.enrollment = new PgEnrollmentStore(db, now);
    this.seq = new PgSeqStore(db, now);
    this.commands = new PgCommandStore(db, now);
    this.rollouts = new PgRolloutStore(db, now);
    this.leases = new PgLeaseStore(db, now);
    this.audit = new PgAuditStore(db, now);
    this.releases = new PgReleaseStore(db, now);
    this.operators = new PgOperatorStore(db, now);
  }

  get open(): boolean {
    return this.#open;
  }

  now(): number {
    return this.#now();
  }

  /** Ends the pool (after the statements in flight); open is false at once. */
  close(): Promise<void> {
    this.#open = false;
    this.#closing ??= this.db.end();
    return this.#closing;
  }
}

/** Connects to `url` (postgres://...), applies pending migrations, returns the storage. */
export async function openPostgresStorage(url: string, options: PostgresStorageOptions = {}): Promise<PostgresStorage> {
  const now = options.now ?? Date.now;
  const db = new PgDb(url, { ...(options.log ? { log: options.log } : {}), ...(options.max ? { max: options.max } : {}) });
  try {
    await migratePostgres(db, { ...(options.create !== undefined ? { create: options.create } : {}), now });
  } catch (err) {
    await db.end().catch(() => undefined);
    throw err;
  }
  return new PostgresStorage(db, now);
}
