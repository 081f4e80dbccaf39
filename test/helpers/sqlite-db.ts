/** The SQLite database under a Storage, for tests that read or set rows with raw SQL. */
import type Database from 'better-sqlite3';
import { SqliteStorage } from '../../server/storage/sqlite/index.js';
import type { Storage } from '../../server/storage/types.js';

/** The better-sqlite3 database of a SQLite storage; throws for any other backend (the test needs SQLite). */
export function sqliteDb(storage: Storage): Database.Database {
  if (!(storage instanceof SqliteStorage))
    throw new Error(`this test reads the SQLite registry directly; the storage is ${storage.info.kind} (${storage.info.location})`);
  return storage.db;
}
