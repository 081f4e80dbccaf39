/**
 * The SQLite registry file: better-sqlite3 in WAL mode, shared by `serve`,
 * `send` and the other CLI commands, each through its own connection. Every
 * change that must be atomic (token consumption, seq allocation, ack recording
 * and its effects) is one IMMEDIATE transaction (`immediate`), so concurrent
 * processes never interleave.
 */
import { existsSync } from 'node:fs';
import Database from 'better-sqlite3';
import { RegistryError } from '../errors.js';
import { migrate } from './schema.js';

export interface SqliteOpenOptions {
  /** Create the file when missing (init); otherwise a missing registry is E_NO_REGISTRY. */
  create?: boolean;
  now?: () => number;
}

/** The open database, its path and the storage's clock: what every store of this implementation shares. */
export class SqliteDb {
  readonly db: Database.Database;
  readonly path: string;
  readonly now: () => number;

  private constructor(db: Database.Database, path: string, now: () => number) {
    this.db = db;
    this.path = path;
    this.now = now;
  }

  /** Opens (and with `create`, creates) the registry and applies pending migrations. */
  static open(path: string, options: SqliteOpenOptions = {}): SqliteDb {
    if (!options.create && path !== ':memory:' && !existsSync(path)) {
      throw new RegistryError('E_NO_REGISTRY', `registry ${path} does not exist; run: provision-server init --data DIR`);
    }
    const db = new Database(path);
    try {
      db.pragma('journal_mode = WAL');
      db.pragma('busy_timeout = 10000');
      db.pragma('foreign_keys = ON');
      db.pragma('synchronous = FULL');
      migrate(db);
    } catch (err) {
      db.close();
      throw err;
    }
    return new SqliteDb(db, path, options.now ?? Date.now);
  }

  /** Runs `fn` in one IMMEDIATE transaction (the write lock taken at BEGIN); nested: a savepoint. */
  immediate<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
