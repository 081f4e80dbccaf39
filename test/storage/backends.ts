/**
 * The shared storage suite runs each test file against both implementations of
 * server/storage/types.ts: `forEachBackend((b) => { ... })` defines one mocha
 * `describe` per backend ('sqlite', 'postgres') around the tests `fn` defines.
 *
 * - `b.open({ now })` opens a Storage on the test's registry: created on the
 *   first open of a test (SQLite: a file in a temp dir; PostgreSQL: a fresh
 *   database of the file's throwaway cluster). Every further open() within the
 *   same test opens the SAME registry (a second machine, its own connection /
 *   pool); each open may have its own clock.
 * - Every storage opened is closed after each test, and the test's SQLite
 *   directory removed.
 * - PostgreSQL: one cluster per test file process (test/helpers/pg-cluster.ts),
 *   started in the describe's `before` (the schema migrated once there into a
 *   template database: each test's database is a copy of it), stopped in its `after`. Without the
 *   binaries the postgres describe is skipped (NO_POSTGRES), unless
 *   REQUIRE_POSTGRES=1 makes that a failure.
 * - `b.sql(storage, text, args)` runs raw SQL on a storage this module opened
 *   (only for what the interface cannot do: the audit's append-only triggers);
 *   placeholders are `$1, $2, ...` on both (rewritten to `?` for SQLite).
 * - STORAGE_BACKENDS=sqlite (or postgres) runs one only (working on one).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { openPostgresStorage } from '../../server/storage/postgres/index.js';
import { openSqliteStorage, SqliteStorage } from '../../server/storage/sqlite/index.js';
import type { Storage } from '../../server/storage/types.js';
import { NO_POSTGRES, postgresBin, postgresRequired, startPgCluster, type PgCluster } from '../helpers/pg-cluster.js';
import { skipBecause } from '../helpers/skip.js';

export type BackendName = 'sqlite' | 'postgres';

export interface OpenOptions {
  now?: () => number;
}

export interface Backend {
  name: BackendName;
  /** A Storage on this test's registry (the same one for every call within a test). */
  open(opts?: OpenOptions): Promise<Storage>;
  /** Raw SQL on a storage opened here ($1.. placeholders); the rows of a query. */
  sql(storage: Storage, text: string, args?: readonly (string | number | null)[]): Promise<Record<string, unknown>[]>;
}

/** Both, or those named in STORAGE_BACKENDS (e.g. `sqlite`) while working on one. */
export const BACKENDS: readonly BackendName[] = (['sqlite', 'postgres'] as const).filter(
  (n) => !process.env.STORAGE_BACKENDS || process.env.STORAGE_BACKENDS.split(',').includes(n),
);

export function forEachBackend(fn: (b: Backend) => void): void {
  for (const name of BACKENDS) describeBackend(name, fn);
}

function describeBackend(name: BackendName, fn: (b: Backend) => void): void {
  describe(name, function () {
    let cluster: PgCluster | undefined;
    let template: string | undefined;
    /** This test's registry location (a path or URL), made at its first open. */
    let location: string | undefined;
    let tempDir: string | undefined;
    const opened: Storage[] = [];

    if (name === 'postgres') {
      before(async function () {
        if (!postgresBin()) {
          if (postgresRequired()) throw new Error(NO_POSTGRES);
          skipBecause(this, NO_POSTGRES);
        }
        this.timeout(60_000);
        cluster = await startPgCluster();
        // Migrated once into a template; each test's database is a copy of it (CREATE DATABASE ... TEMPLATE: fast).
        template = `tmpl_${process.pid}`;
        const migrated = await openPostgresStorage(await cluster.createDatabase(template), { create: true });
        await migrated.close();
      });
      after(async () => {
        await cluster?.stop();
        cluster = undefined;
      });
    }

    afterEach(async () => {
      const closing = opened.splice(0);
      for (const s of closing) await s.close();
      location = undefined;
      if (tempDir) rmSync(tempDir, { recursive: true, force: true });
      tempDir = undefined;
    });

    const backend: Backend = {
      name,
      async open(opts: OpenOptions = {}): Promise<Storage> {
        const now = opts.now ?? Date.now;
        let storage: Storage;
        if (name === 'sqlite') {
          if (location === undefined) {
            tempDir = mkdtempSync(join(tmpdir(), 'storage-suite-'));
            location = join(tempDir, 'registry.sqlite');
          }
          storage = openSqliteStorage(location, { create: true, now });
        } else {
          if (!cluster || !template) throw new Error('the PostgreSQL cluster is not started');
          location ??= await copyDatabase(cluster, template);
          storage = await openPostgresStorage(location, { create: true, now });
        }
        opened.push(storage);
        return storage;
      },
      async sql(storage, text, args = []) {
        if (name === 'sqlite') {
          if (!(storage instanceof SqliteStorage)) throw new Error('not a SQLite storage');
          const stmt = storage.db.prepare(text.replace(/\$\d+/g, '?'));
          if (stmt.reader) return stmt.all(...args) as Record<string, unknown>[];
          stmt.run(...args);
          return [];
        }
        if (!hasPool(storage)) throw new Error('not a PostgreSQL storage');
        return (await storage.pool.query(text, [...args])).rows as Record<string, unknown>[];
      },
    };
    fn(backend);
  });
}

let copies = 0;

/** A new database of the cluster, a copy of `template` (which has no connection open); its URL. */
async function copyDatabase(cluster: PgCluster, template: string): Promise<string> {
  const name = `t${process.pid}_c${++copies}`;
  const client = new pg.Client({ connectionString: cluster.url });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE "${name}" TEMPLATE "${template}"`);
  } finally {
    await client.end();
  }
  return cluster.url.replace(/\/postgres$/, `/${name}`);
}

function hasPool(storage: Storage): storage is Storage & { pool: pg.Pool } {
  return 'pool' in storage;
}
