/**
 * The audit chain's migrations (SQLite 9, PostgreSQL 2): a registry with audit rows from before the chain
 * gets them chained in id order (the same hashes a verifier computes from genesis), a head at the last, and
 * appends continue it. PostgreSQL: rows with id gaps (identity values lost to rollbacks) keep their ids.
 */
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { AUDIT_GENESIS, chainHash } from '../../server/storage/audit-chain.js';
import { openPostgresStorage } from '../../server/storage/postgres/index.js';
import { PG_MIGRATIONS } from '../../server/storage/postgres/schema.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { MIGRATIONS } from '../../server/storage/sqlite/schema.js';
import type { Storage } from '../../server/storage/types.js';
import { NO_POSTGRES, postgresBin, postgresRequired, startPgCluster, type PgCluster } from '../helpers/pg-cluster.js';
import { skipBecause } from '../helpers/skip.js';

/** Rows as an older version wrote them; detail text not canonical (spaces, key order), as SQLite's json_object or another writer may. */
const OLD_ROWS: [number, number, string, string | null, string][] = [
  [1, 1000, 'device.add', 'd1', '{"origin": "jwks", "b": 1, "a": [1, {"y": 2, "x": 1}]}'],
  [2, 1001, 'command.create', 'd1', '{"jti":"j1","text":"ünïcödé ✓ \\"q\\""}'],
  [5, 1002, 'rollout.migrated', null, '{}'],
  [6, 1003, 'command.ack', 'd1', '{"jti":"j1","n":1.25}'],
];

/** The hashes a verifier computes for OLD_ROWS from genesis. */
function expectedHashes(): string[] {
  let prev = AUDIT_GENESIS;
  return OLD_ROWS.map(([id, at, event, deviceId, detail]) => (prev = chainHash(prev, { id, at, event, deviceId, detail: JSON.parse(detail) as unknown })));
}

async function checkMigrated(s: Storage, hashes: Record<string, unknown>[]): Promise<void> {
  const want = expectedHashes();
  expect(hashes.map((h) => [Number(h.id), h.hash])).to.deep.equal(OLD_ROWS.map((r, i) => [r[0], want[i]]));
  expect(hashes[0]?.prev_hash).to.equal(AUDIT_GENESIS);
  const v = await s.audit.verifyChain();
  expect(v.broken).to.equal(undefined);
  expect(v.checked).to.equal(OLD_ROWS.length);
  await s.audit.append('after.migration', null, { ok: true });
  expect(await s.audit.lastId()).to.equal(7);
  const after = await s.audit.verifyChain();
  expect(after.broken).to.equal(undefined);
  expect(after.checked).to.equal(OLD_ROWS.length + 1);
}

describe('storage: audit chain migrations', function () {
  this.timeout(60_000);

  it('sqlite: a version-8 registry gets its audit rows chained in id order, then appends continue the chain', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'audit-chain-mig-'));
    try {
      const path = join(dir, 'registry.sqlite');
      const db = new Database(path);
      for (const [i, sql] of MIGRATIONS.slice(0, 8).entries()) {
        db.exec(sql);
        db.pragma(`user_version = ${i + 1}`);
      }
      for (const r of OLD_ROWS) db.prepare('INSERT INTO audit (id, at, event, device_id, detail) VALUES (?, ?, ?, ?, ?)').run(...r);
      db.close();
      const s = openSqliteStorage(path, {});
      try {
        const raw = new Database(path, { readonly: true });
        const rows = raw.prepare('SELECT id, prev_hash, hash FROM audit ORDER BY id').all() as Record<string, unknown>[];
        raw.close();
        await checkMigrated(s, rows);
      } finally {
        await s.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('sqlite: 2,501 rows with id gaps (three batches of the chain fill) are chained across the batch boundaries; the head is the last', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'audit-chain-mig-'));
    try {
      const path = join(dir, 'registry.sqlite');
      const db = new Database(path);
      for (const [i, sql] of MIGRATIONS.slice(0, 8).entries()) {
        db.exec(sql);
        db.pragma(`user_version = ${i + 1}`);
      }
      const insert = db.prepare('INSERT INTO audit (id, at, event, device_id, detail) VALUES (?, ?, ?, ?, ?)');
      // Ids with gaps at and around the batch boundaries (1000, 2000).
      const ids = Array.from({ length: 2600 }, (_, k) => k + 1).filter((id) => id % 26 !== 0 || id === 2600);
      db.transaction(() => {
        for (const id of ids) insert.run(id, 1000 + id, 'old.row', id % 2 ? 'd1' : null, JSON.stringify({ id }));
      })();
      db.close();
      const s = openSqliteStorage(path, {});
      try {
        let prev = AUDIT_GENESIS;
        for (const id of ids) prev = chainHash(prev, { id, at: 1000 + id, event: 'old.row', deviceId: id % 2 ? 'd1' : null, detail: { id } });
        expect(await s.audit.head()).to.deep.equal({ lastId: 2600, hash: prev });
        const v = await s.audit.verifyChain();
        expect(v.broken).to.equal(undefined);
        expect(v.checked).to.equal(ids.length);
      } finally {
        await s.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  describe('postgres', function () {
    let cluster: PgCluster | undefined;
    before(async function () {
      if (!postgresBin()) {
        if (postgresRequired()) throw new Error(NO_POSTGRES);
        skipBecause(this, NO_POSTGRES);
      }
      cluster = await startPgCluster();
    });
    after(async () => {
      await cluster?.stop();
    });

    it('a version-1 registry gets its audit rows (ids with gaps) chained in id order; the id is no identity any more', async () => {
      const url = await (cluster as PgCluster).createDatabase();
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      try {
        await client.query('CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at bigint NOT NULL)');
        await client.query(PG_MIGRATIONS[0] as string);
        await client.query('INSERT INTO schema_migrations VALUES (1, 0)');
        for (const r of OLD_ROWS)
          await client.query('INSERT INTO audit (id, at, event, device_id, detail) OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5)', r);
      } finally {
        await client.end();
      }
      const s = await openPostgresStorage(url);
      try {
        const check = new pg.Client({ connectionString: url });
        await check.connect();
        try {
          const rows = (await check.query('SELECT id, prev_hash, hash FROM audit ORDER BY id')).rows as Record<string, unknown>[];
          await checkMigrated(s, rows);
          const identity = await check.query("SELECT is_identity FROM information_schema.columns WHERE table_name = 'audit' AND column_name = 'id'");
          expect(identity.rows[0]).to.deep.equal({ is_identity: 'NO' });
          const bare = await check.query("INSERT INTO audit (id, at, event, device_id, detail) VALUES (99, 1, 'x', NULL, '{}')").catch((e: unknown) => e);
          expect(String(bare)).to.match(/null value in column "prev_hash"/);
        } finally {
          await check.end();
        }
      } finally {
        await s.close();
      }
    });
  });
});
