/**
 * The SQLite implementation of the storage interface: the embedded default
 * (one file, DATA/registry.sqlite, better-sqlite3 in WAL mode), shared by the
 * processes of one machine. One file per concern, as the PostgreSQL one
 * (server/storage/postgres/): each call runs synchronously inside SQLite
 * (IMMEDIATE transactions serialise writers across processes) and resolves
 * at once.
 */
import type Database from 'better-sqlite3';
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
import { SqliteAuditStore } from './audit.js';
import { SqliteCommandStore } from './commands.js';
import { SqliteDb, type SqliteOpenOptions } from './db.js';
import { SqliteDeviceStore } from './devices.js';
import { SqliteEnrollmentStore } from './enrollment.js';
import { SqliteLeaseStore } from './leases.js';
import { SqliteOperatorStore } from './operators.js';
import { SqliteReleaseStore } from './releases.js';
import { SqliteRolloutStore } from './rollouts.js';
import { SqliteSeqStore } from './seq.js';

export type { SqliteOpenOptions } from './db.js';

/** Opens (and with `create`, creates) the registry file and applies pending migrations. */
export function openSqliteStorage(path: string, options: SqliteOpenOptions = {}): SqliteStorage {
  return new SqliteStorage(SqliteDb.open(path, options));
}

export class SqliteStorage implements Storage {
  readonly info: StorageInfo;
  readonly devices: DeviceStore;
  readonly enrollment: EnrollmentStore;
  readonly seq: SeqStore;
  readonly commands: CommandStore;
  readonly rollouts: RolloutStore;
  readonly leases: LeaseStore;
  readonly audit: AuditStore;
  readonly releases: ReleaseStore;
  readonly operators: OperatorStore;
  readonly #s: SqliteDb;

  constructor(s: SqliteDb) {
    this.#s = s;
    this.info = { kind: 'sqlite', location: s.path };
    this.devices = new SqliteDeviceStore(s);
    this.enrollment = new SqliteEnrollmentStore(s);
    this.seq = new SqliteSeqStore(s);
    this.commands = new SqliteCommandStore(s);
    this.rollouts = new SqliteRolloutStore(s);
    this.leases = new SqliteLeaseStore(s);
    this.audit = new SqliteAuditStore(s);
    this.releases = new SqliteReleaseStore(s);
    this.operators = new SqliteOperatorStore(s);
  }

  /** The SQLite database (tests, `registry migrate`). */
  get db(): Database.Database {
    return this.#s.db;
  }

  get open(): boolean {
    return this.#s.db.open;
  }

  now(): number {
    return this.#s.now();
  }

  async close(): Promise<void> {
    this.#s.close();
  }
}
