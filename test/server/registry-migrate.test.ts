/**
 * `provision-server registry migrate --to postgres://...`: a registry filled
 * through today's code paths (devices with keys and tags, tokens, commands and
 * acks with a rotate, rollouts with targets in several states, releases, audit
 * rows, a lease) is copied into a throwaway PostgreSQL cluster, verified, and
 * read back; the SQLite file is left byte for byte as it was; a second copy, a
 * tampered copy and bad input are refused.
 */
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { copyFileSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import pg from 'pg';
import { toPublicJwk, type AckClaims, type ReleaseManifest } from '../../protocol/index.js';
import { ackEffectsOf } from '../../server/core/actions/table.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { openPostgresStorage } from '../../server/storage/postgres/index.js';
import { SCHEMA_VERSION } from '../../server/storage/sqlite/schema.js';
import { MIGRATED_TABLES, verifyRegistryCopy, type MigrateResult } from '../../server/storage/migrate-registry.js';
import { migratePostgres } from '../../server/storage/postgres/schema.js';
import { PgDb } from '../../server/storage/postgres/db.js';
import type { CommandRecord } from '../../server/storage/records.js';
import { NO_POSTGRES, postgresBin, postgresRequired, startPgCluster, type PgCluster } from '../helpers/pg-cluster.js';
import { runServerCli } from './run-cli.js';
import { makeSimDevice } from './sim-fleet.js';
import { makeCheckpoint, verifyRegistry } from '../../server/audit/registry-audit.js';
import type { ServerKeys } from '../../server/keys/server-keys.js';
import { serverKeysIn } from '../audit/audit-log.js';

/** Devices beyond the named ones, so devices, device_keys and audit cross the 500-row batches. */
const BULK_DEVICES = 620;

function manifest(version: string, sha: string): ReleaseManifest {
  return {
    format: 1,
    version,
    arch: 'arm64',
    node: { ships: false, version: '20.19.0', abi: '115', binary_sha256: null },
    gpio: 'omit',
    snapshot: false,
    artifact: { bytes: 1234, sha256: sha, unpacked_bytes: 4321 },
    chunks: { bytes: 61_440, count: 1, index_sha256: 'c'.repeat(64) },
    created_at: '2026-12-01T00:00:00Z',
  };
}

/**
 * A live release's directory with real files (the artifact random bytes, its
 * chunk index, a manifest naming both): what `registry migrate` loads into
 * release_files. The JWS is not signed (nothing here checks signatures).
 */
async function writeReleaseDir(dir: string, version: string): Promise<{ manifest: ReleaseManifest; jws: string }> {
  const artifact = randomBytes(1234);
  const index = createHash('sha256').update(artifact).digest();
  const m = manifest(version, createHash('sha256').update(artifact).digest('hex'));
  m.chunks.index_sha256 = createHash('sha256').update(index).digest('hex');
  const jws = `eyJhbGciOiJFZERTQSJ9.${Buffer.from(JSON.stringify(m)).toString('base64url')}.c2ln`;
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'artifact.tar.gz'), artifact);
  await writeFile(join(dir, 'index.bin'), index);
  await writeFile(join(dir, 'manifest.jws'), `${jws}\n`);
  await writeFile(join(dir, 'manifest.json'), `${JSON.stringify(m, null, 2)}\n`);
  return { manifest: m, jws };
}

/** Fills a registry through the registry's own code (the tests read the file itself); returns the server keys that signed its audit checkpoint. */
async function buildRegistry(path: string): Promise<ServerKeys> {
  let now = 1_765_000_000_000;
  const reg = openSqliteStorage(path, { create: true, now: () => now++ });
  // Ids whose order differs between byte order and a language collation: the digest order must match on both sides.
  const named = ['alpha-1', 'Zeta-2', 'émile-3', 'b_4'];
  const devs = await Promise.all(named.map((id) => makeSimDevice(id)));
  for (const d of devs.slice(0, 3)) {
    await reg.devices.add({
      id: d.id,
      userId: 'alice',
      origin: 'jwks',
      signing: toPublicJwk(d.signing),
      encryption: toPublicJwk(d.encryption),
      state: 'provisioned',
    });
  }
  // The fourth enrolls with a token (used); another token stays unused (a bundled board that never enrolled).
  const dev4 = devs[3] as (typeof devs)[number];
  const { token } = await reg.enrollment.createToken(dev4.id, 'bob', 3_600_000);
  await reg.enrollment.enroll({
    deviceId: dev4.id,
    token,
    enrollmentJti: randomUUID(),
    signing: toPublicJwk(dev4.signing),
    encryption: toPublicJwk(dev4.encryption),
  });
  await reg.enrollment.createToken('never-enrolled', 'carol', 3_600_000);
  await reg.devices.addTags('alpha-1', ['lab', 'floor-2']);
  await reg.devices.addTags('Zeta-2', ['lab']);
  const bulkKeys = await makeSimDevice('bulk');
  for (let i = 0; i < BULK_DEVICES; i++) {
    await reg.devices.add({ id: `bulk-${String(i).padStart(4, '0')}`, userId: `u${i % 7}`, origin: 'legacy', encryption: toPublicJwk(bulkKeys.encryption) });
  }

  // Commands: a rotate applied (keys rotated), an update rejected, a selftest sent and unanswered.
  const [a, z] = devs as [(typeof devs)[number], (typeof devs)[number]];
  const command = async (deviceId: string, action: string, kid: string): Promise<{ jti: string; seq: number }> => {
    const jti = randomUUID();
    const { seq } = await reg.seq.allocate(deviceId);
    await reg.commands.record({
      jti,
      deviceId,
      action,
      userId: 'alice',
      paramsDigest: `d-${action}`,
      seq,
      encryptionKid: kid,
      sealed: `sealed.${action}.${jti}`,
      expiresAt: now + 600_000,
    });
    await reg.commands.markSent(jti);
    return { jti, seq };
  };
  const next = await makeSimDevice(a.id);
  const rot = await command(a.id, 'rotate', a.encryption.kid);
  const rotAck: AckClaims = {
    iss: a.id,
    aud: 'provision-server',
    iat: 0,
    jti: randomUUID(),
    ref: rot.jti,
    seq: rot.seq,
    status: 'applied',
    code: 'OK',
    detail: '',
  };
  const rotated = await reg.commands.recordAck(
    a.id,
    rotAck,
    ackEffectsOf((await reg.commands.get(rot.jti)) as CommandRecord, rotAck, { signing: toPublicJwk(next.signing), encryption: toPublicJwk(next.encryption) }),
  );
  expect(rotated.kind).to.equal('recorded');
  expect((await reg.devices.require(a.id)).encryption?.kid).to.equal(next.encryption.kid);
  const upd = await command(z.id, 'update', z.encryption.kid);
  const updAck: AckClaims = {
    iss: z.id,
    aud: 'provision-server',
    iat: 0,
    jti: randomUUID(),
    ref: upd.jti,
    seq: upd.seq,
    status: 'rejected',
    code: 'E_PARAMS',
    detail: 'no',
  };
  expect((await reg.commands.recordAck(z.id, updAck, [])).kind).to.equal('recorded');
  await command(z.id, 'selftest', z.encryption.kid);

  // Rollouts: one running with targets pending, sending and sent (under a lease); one cancelled.
  const rollouts = reg.rollouts;
  const spec = {
    action: 'selftest',
    params: {},
    selector: { tag: 'lab' },
    ttlSeconds: 300,
    deadlineAt: now + 86_400_000,
    ratePerMin: 10,
    rampFrom: 2,
    rampFactor: 1.5,
    abortPercent: 12.5,
    abortMin: 3,
    concurrency: 5,
  } as const;
  const running = await rollouts.create({ ...spec, selector: { devices: ['alpha-1', 'Zeta-2', 'b_4'] } }, ['alpha-1', 'Zeta-2', 'b_4']);
  const lease = await reg.leases.take('rollouts', 'serve-1', 30_000);
  if (!lease) throw new Error('no lease');
  expect(await rollouts.claim(running.id, 'alpha-1', lease)).to.equal(true);
  expect(await rollouts.claim(running.id, 'Zeta-2', lease)).to.equal(true);
  const sent = await command('Zeta-2', 'selftest', z.encryption.kid);
  expect(await rollouts.markSent(running.id, 'Zeta-2', sent.jti, lease)).to.equal('sent');
  const cancelled = await rollouts.create({ ...spec, selector: { all: true } }, ['bulk-0001', 'bulk-0002']);
  await rollouts.setState(cancelled.id, ['running'], 'cancelled', 'changed my mind', 'operator');

  // Releases: one removed (kept with removed_at), one live; ids 1 and 2.
  const releases = reg.releases;
  await releases.markRemoved(await releases.add(manifest('1.0.0', 'a'.repeat(64)), 'jws.1', '/var/lib/provision-server/releases/1.0.0-arm64'));
  const liveDir = join(dirname(path), 'releases', '1.1.0-arm64');
  const live = await writeReleaseDir(liveDir, '1.1.0');
  await releases.add(live.manifest, live.jws, liveDir);

  // Operator accounts: an admin, a viewer with an API token and a session (their hashes are copied as they are).
  const hash = '$scrypt$ln=15,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g';
  await reg.operators.add({ name: 'alice', role: 'admin', passwordHash: hash }, 'cli:root');
  await reg.operators.add({ name: 'bob', role: 'viewer', passwordHash: hash }, 'alice');
  await reg.operators.createToken('bob', 'dashboards', null, 'alice');
  await reg.operators.createSession('bob', { idleMs: 60_000, absoluteMs: 3_600_000 });

  await reg.audit.append('test.unicode', 'émile-3', { note: 'ünïcödé ✓ "quoted" \\ back', n: 1.25 });
  // A signed checkpoint of the audit chain (issue 25): copied with its id, it still verifies against the copy.
  const keys = await serverKeysIn(dirname(path));
  await makeCheckpoint(reg, keys, now);
  await reg.close();
  return keys;
}

function sqliteCounts(path: string): Record<string, number> {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    return Object.fromEntries(MIGRATED_TABLES.map((t) => [t.name, (db.prepare(`SELECT COUNT(*) AS n FROM ${t.name}`).get() as { n: number }).n]));
  } finally {
    db.close();
  }
}

async function pgQuery<R extends object>(url: string, sql: string, params: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(sql, params)).rows as R[];
  } finally {
    await client.end();
  }
}

let icuDatabases = 0;

/**
 * A new database sorting text by a language collation (ICU 'en': 'Zeta' after
 * 'émile'), unlike SQLite's byte order: the copy's digests must not depend on
 * the database's collation. Falls back to the cluster's default (C) when this
 * PostgreSQL has no ICU.
 */
async function createLanguageSortedDatabase(c: PgCluster): Promise<string> {
  const name = `icu${process.pid}_${++icuDatabases}`;
  try {
    await pgQuery(c.url, `CREATE DATABASE ${name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C'`);
    return c.url.replace(/\/postgres$/, `/${name}`);
  } catch {
    return c.createDatabase();
  }
}

async function pgCounts(url: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const t of MIGRATED_TABLES) out[t.name] = Number((await pgQuery<{ n: string }>(url, `SELECT COUNT(*) AS n FROM ${t.name}`))[0]?.n);
  return out;
}

describe('server: registry migrate (SQLite -> PostgreSQL)', function () {
  this.timeout(120_000);
  let cluster: PgCluster | undefined;
  let dir: string;
  let data: string;
  let registry: string;
  let bytes: Buffer;
  let mtimeMs: number;
  let counts: Record<string, number>;
  let serverKeys: ServerKeys;

  before(async function () {
    if (!postgresBin()) {
      if (postgresRequired()) throw new Error(NO_POSTGRES);
      return this.skip();
    }
    cluster = await startPgCluster();
    dir = await mkdtemp(join(tmpdir(), 'registry-migrate-'));
    data = join(dir, 'data');
    await mkdir(data);
    registry = join(data, 'registry.sqlite');
    serverKeys = await buildRegistry(registry);
    counts = sqliteCounts(registry);
    bytes = readFileSync(registry);
    mtimeMs = statSync(registry).mtimeMs;
  });
  after(async () => {
    await cluster?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const unchanged = (): void => {
    expect(Buffer.compare(readFileSync(registry), bytes), 'the SQLite file changed').to.equal(0);
    expect(statSync(registry).mtimeMs).to.equal(mtimeMs);
  };

  it('copies every table, verifies it, keeps ids, leaves the SQLite file unchanged; a second migrate into it is refused', async () => {
    const c = cluster as PgCluster;
    expect(counts.devices).to.equal(4 + BULK_DEVICES);
    expect(counts.audit).to.be.greaterThan(500);
    const url = await createLanguageSortedDatabase(c);
    const r = await runServerCli(['registry', 'migrate', '--data', data, '--to', url]);
    expect(r.code, r.stderr).to.equal(0);
    // The table: each table with its rows and a digest prefix.
    for (const t of MIGRATED_TABLES) expect(r.stdout).to.match(new RegExp(`^${t.name} +${counts[t.name]}  [0-9a-f]{16}$`, 'm'));
    expect(r.stdout).to.contain('Not copied: leases (1 row): engine leases');
    expect(r.stdout).to.contain('--registry URL').and.contain('PROVISION_SERVER_REGISTRY').and.contain('server.json');
    expect(r.stdout).to.contain(`The SQLite file ${registry} was left unchanged`);
    expect(r.stdout).to.match(/^Release files: 4 files of 1 live release \(\d+ bytes\) copied and verified \(SHA-256\)\.$/m);
    unchanged();
    // The live release's files, byte for byte; none for the removed one.
    const files = await pgQuery<{ release_id: string; name: string; bytes: Buffer }>(url, 'SELECT release_id, name, bytes FROM release_files ORDER BY name');
    expect(files.map((f) => [Number(f.release_id), f.name])).to.deep.equal([
      [2, 'artifact.tar.gz'],
      [2, 'index.bin'],
      [2, 'manifest.json'],
      [2, 'manifest.jws'],
    ]);
    for (const f of files) expect(f.bytes.equals(await readFile(join(data, 'releases', '1.1.0-arm64', f.name))), f.name).to.equal(true);

    // Read back: the same rows in PostgreSQL.
    expect(await pgCounts(url)).to.deep.equal(counts);
    const src = new Database(registry, { readonly: true });
    try {
      const sqliteIds = (src.prepare('SELECT id FROM devices ORDER BY id').all() as { id: string }[]).map((d) => d.id);
      const pgIds = (await pgQuery<{ id: string }>(url, 'SELECT id FROM devices ORDER BY id COLLATE "C"')).map((d) => d.id);
      expect(pgIds).to.deep.equal(sqliteIds);
      const keys = await pgQuery<{ kid: string; status: string; use: string }>(
        url,
        "SELECT kid, status, use FROM device_keys WHERE device_id = 'alpha-1' ORDER BY added_at, kid",
      );
      expect(keys.map((k) => k.status).sort()).to.deep.equal(['current', 'current', 'previous', 'previous']);
      const targets = await pgQuery<{ state: string; n: string }>(url, 'SELECT state, COUNT(*) AS n FROM rollout_targets GROUP BY state ORDER BY state');
      expect(targets.map((t) => [t.state, Number(t.n)])).to.deep.equal([
        ['cancelled', 2],
        ['pending', 1],
        ['sending', 1],
        ['sent', 1],
      ]);
      const ro = await pgQuery<{ ramp_factor: number; abort_percent: number; state: string }>(
        url,
        'SELECT ramp_factor, abort_percent, state FROM rollouts ORDER BY created_at',
      );
      expect(ro).to.deep.equal([
        { ramp_factor: 1.5, abort_percent: 12.5, state: 'running' },
        { ramp_factor: 1.5, abort_percent: 12.5, state: 'cancelled' },
      ]);
      const acks = await pgQuery<{ action: string; ack_status: string | null }>(url, 'SELECT action, ack_status FROM commands ORDER BY created_at');
      expect(acks).to.deep.equal([
        { action: 'rotate', ack_status: 'applied' },
        { action: 'update', ack_status: 'rejected' },
        { action: 'selftest', ack_status: null },
        { action: 'selftest', ack_status: null },
      ]);
      const tokens = await pgQuery<{ device_id: string; used: boolean }>(
        url,
        'SELECT device_id, used_at IS NOT NULL AS used FROM enrollment_tokens ORDER BY device_id',
      );
      expect(tokens).to.deep.equal([
        { device_id: 'b_4', used: true },
        { device_id: 'never-enrolled', used: false },
      ]);
      const operators = await pgQuery<{ name: string; role: string; tokens: string; sessions: string }>(
        url,
        `SELECT o.name, o.role, (SELECT COUNT(*) FROM operator_tokens t WHERE t.operator = o.name) AS tokens,
           (SELECT COUNT(*) FROM operator_sessions s WHERE s.operator = o.name) AS sessions FROM operators o ORDER BY o.name`,
      );
      expect(operators.map((o) => [o.name, o.role, Number(o.tokens), Number(o.sessions)])).to.deep.equal([
        ['alice', 'admin', 0, 0],
        ['bob', 'viewer', 1, 1],
      ]);
      const unicode = await pgQuery<{ detail: string }>(url, "SELECT detail FROM audit WHERE event = 'test.unicode'");
      expect(JSON.parse(unicode[0]?.detail ?? '{}')).to.deep.equal({ note: 'ünïcödé ✓ "quoted" \\ back', n: 1.25 });
      expect((await pgQuery(url, 'SELECT * FROM leases')).length, 'leases are not copied').to.equal(0);

      // Ids kept; new rows continue after the copied ones.
      const maxAudit = (src.prepare('SELECT MAX(id) AS m FROM audit').get() as { m: number }).m;
      const pgAuditIds = (await pgQuery<{ id: string }>(url, 'SELECT id FROM audit ORDER BY id')).map((x) => Number(x.id));
      expect(pgAuditIds).to.deep.equal((src.prepare('SELECT id FROM audit ORDER BY id').all() as { id: number }[]).map((x) => x.id));
      // The audit chain was copied with its head: an append continues it (id and hash), and it verifies whole.
      const copy = await openPostgresStorage(url);
      try {
        await copy.audit.append('after.migrate', null);
        expect(await copy.audit.lastId()).to.equal(maxAudit + 1);
        const chain = await copy.audit.verifyChain();
        expect(chain.broken).to.equal(undefined);
        expect(chain.checked).to.equal(pgAuditIds.length + 1);
        // And its signed checkpoint: the copy verifies whole (audit verify's path), the checkpoint at the last copied entry.
        const audit = await verifyRegistry(copy, serverKeys);
        expect(audit.broken, JSON.stringify(audit.broken)).to.equal(undefined);
        expect(audit.checkpoints).to.deep.include({ verified: 1 });
        expect(audit.checkpoints.last?.lastId).to.equal(maxAudit);
      } finally {
        await copy.close();
      }
      const rel = await pgQuery<{ id: string }>(
        url,
        "INSERT INTO releases (version, arch, bytes, sha256, manifest, dir, added_at) VALUES ('2.0.0', 'arm64', 1, 'd', 'm', '/x', 1) RETURNING id",
      );
      expect(Number(rel[0]?.id)).to.equal(3);
      // The append-only trigger holds on the copy.
      let refused: unknown;
      await pgQuery(url, 'DELETE FROM audit WHERE id = 1').catch((e: unknown) => (refused = e));
      expect(String(refused)).to.contain('append-only');
    } finally {
      src.close();
    }

    // Into the same database again: refused, nothing written.
    const before = await pgCounts(url);
    const again = await runServerCli(['registry', 'migrate', '--data', data, '--to', url]);
    expect(again.code).to.equal(2);
    expect(again.stderr).to.contain('E_MIGRATE_NOT_EMPTY').and.contain('nothing was written');
    expect(again.stdout).to.equal('');
    expect(await pgCounts(url)).to.deep.equal(before);
    unchanged();
  });

  it('--json gives every table with the digests the verifier computes; a tampered copy fails verification naming the table', async () => {
    const c = cluster as PgCluster;
    const url = await createLanguageSortedDatabase(c);
    // A password (trust auth ignores it) is never printed.
    const withPassword = url.replace(/^(postgres:\/\/[^@]+)@/, '$1:s3cret-pw@');
    expect(withPassword).to.contain(':s3cret-pw@');
    const r = await runServerCli(['registry', 'migrate', '--from', registry, '--to', withPassword, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout + r.stderr).to.not.contain('s3cret-pw');
    const result = JSON.parse(r.stdout) as MigrateResult;
    expect(result.to).to.contain(':***@');
    expect(result.schemaVersion).to.equal(SCHEMA_VERSION);
    expect(result.skipped).to.deep.equal([{ table: 'leases', rows: 1, reason: 'engine leases: the first serve on the new registry takes a new one' }]);
    expect(result.tables.map((t) => t.table)).to.deep.equal(MIGRATED_TABLES.map((t) => t.name));
    expect(Object.fromEntries(result.tables.map((t) => [t.table, t.rows]))).to.deep.equal(counts);
    const verified = await verifyRegistryCopy(registry, url);
    expect(verified).to.deep.equal(result.tables);
    unchanged();

    // One value changed in one row: the digest differs, the table is named.
    await pgQuery(url, "UPDATE devices SET agent_version = '9.9.9' WHERE id = 'bulk-0300'");
    let err: unknown;
    await verifyRegistryCopy(registry, url).catch((e: unknown) => (err = e));
    expect(err).to.have.property('code', 'E_MIGRATE_VERIFY');
    expect((err as Error).message).to.match(/^table devices: the rows differ/);
    await pgQuery(url, "UPDATE devices SET agent_version = NULL WHERE id = 'bulk-0300'");
    expect(await verifyRegistryCopy(registry, url)).to.deep.equal(result.tables);

    // A row missing: the count differs.
    await pgQuery(url, "DELETE FROM rollout_targets WHERE device_id = 'b_4'");
    err = undefined;
    await verifyRegistryCopy(registry, url).catch((e: unknown) => (err = e));
    expect(err).to.have.property('code', 'E_MIGRATE_VERIFY');
    expect((err as Error).message).to.contain('table rollout_targets: 5 rows in SQLite, 4 in PostgreSQL');
    unchanged();
  });

  it("a live release whose files are missing or not its row's is refused (E_MIGRATE_VERIFY naming it, nothing kept)", async () => {
    const c = cluster as PgCluster;
    const artifact = join(data, 'releases', '1.1.0-arm64', 'artifact.tar.gz');
    const good = await readFile(artifact);
    const bad = Buffer.from(good);
    bad[100] = (bad[100] ?? 0) ^ 1;
    try {
      await writeFile(artifact, bad);
      const url = await c.createDatabase();
      const r = await runServerCli(['registry', 'migrate', '--data', data, '--to', url]);
      expect(r.code).to.equal(1);
      expect(r.stderr).to.contain('E_MIGRATE_VERIFY: release 1.1.0 (arm64)').and.contain("does not have the manifest's SHA-256");
      expect(
        Object.values(await pgCounts(url)).every((n) => n === 0),
        'nothing kept',
      ).to.equal(true);
      expect(await pgQuery(url, 'SELECT name FROM release_files')).to.deep.equal([]);
      await rm(artifact);
      const url2 = await c.createDatabase();
      const gone = await runServerCli(['registry', 'migrate', '--data', data, '--to', url2]);
      expect(gone.code).to.equal(1);
      expect(gone.stderr).to.contain('E_MIGRATE_VERIFY: release 1.1.0 (arm64)').and.contain('release remove');
    } finally {
      await writeFile(artifact, good);
    }
    unchanged();
  });

  it('a copy that does not read back the same is rolled back whole (E_MIGRATE_VERIFY, exit 1, nothing kept)', async () => {
    const c = cluster as PgCluster;
    const url = await c.createDatabase();
    // A target whose schema silently alters what is written: the verification inside the copy's transaction must catch it.
    const db = new PgDb(url);
    try {
      await migratePostgres(db, { create: true });
      await db.run(`CREATE FUNCTION mangle() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.detail := NEW.detail || ' '; RETURN NEW; END $$`);
      await db.run(`CREATE TRIGGER mangle BEFORE INSERT ON audit FOR EACH ROW WHEN (NEW.id = 7) EXECUTE FUNCTION mangle()`);
    } finally {
      await db.end();
    }
    const r = await runServerCli(['registry', 'migrate', '--data', data, '--to', url]);
    expect(r.code).to.equal(1);
    expect(r.stderr).to.match(/E_MIGRATE_VERIFY: table audit: the rows differ/);
    expect(
      Object.values(await pgCounts(url)).every((n) => n === 0),
      'nothing kept',
    ).to.equal(true);
    unchanged();
  });

  it('bad input is refused with a code before anything is written', async () => {
    const c = cluster as PgCluster;
    const url = await c.createDatabase();
    const noTo = await runServerCli(['registry', 'migrate', '--data', data]);
    expect(noTo.code).to.equal(2);
    expect(noTo.stderr).to.contain('E_USAGE').and.contain('to');
    for (const to of ['mysql://u@h/db', join(dir, 'other.sqlite'), 'postgres://u@h']) {
      const bad = await runServerCli(['registry', 'migrate', '--data', data, '--to', to]);
      expect(bad.code, to).to.equal(2);
      expect(bad.stderr, to).to.contain('E_USAGE').and.contain('postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE');
    }
    const missing = await runServerCli(['registry', 'migrate', '--data', join(dir, 'nowhere'), '--to', url]);
    expect(missing.code).to.equal(2);
    expect(missing.stderr)
      .to.contain('E_NO_REGISTRY')
      .and.contain(join(dir, 'nowhere', 'registry.sqlite'));
    const garbage = join(dir, 'garbage.sqlite');
    writeFileSync(garbage, 'not a database, just text that is long enough to have a header and then some more bytes\n'.repeat(20));
    const notDb = await runServerCli(['registry', 'migrate', '--from', garbage, '--to', url]);
    expect(notDb.code).to.equal(2);
    expect(notDb.stderr).to.contain('E_NO_REGISTRY').and.contain('is not a SQLite registry');
    // An older registry: to be opened with this version first.
    const old = join(dir, 'old.sqlite');
    copyFileSync(registry, old);
    const w = new Database(old);
    w.pragma(`user_version = ${SCHEMA_VERSION - 1}`);
    w.close();
    const older = await runServerCli(['registry', 'migrate', '--from', old, '--to', url]);
    expect(older.code).to.equal(2);
    expect(older.stderr).to.contain('E_REGISTRY_VERSION').and.contain('open it once with this version first');
    expect(await pgQuery(url, "SELECT 1 FROM pg_tables WHERE tablename = 'schema_migrations'")).to.deep.equal([]);
    // A server nobody listens on.
    const unreachable = await runServerCli(['registry', 'migrate', '--data', data, '--to', `postgres://u@127.0.0.1:1/db`]);
    expect(unreachable.code).to.equal(1);
    expect(unreachable.stderr).to.contain('E_STORAGE_UNAVAILABLE');
    unchanged();
  });
});
