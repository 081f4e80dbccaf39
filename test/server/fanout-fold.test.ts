/**
 * Migration 8: the legacy fan-outs fold into rollouts. A registry made at schema
 * version 7 holding fan-outs in several states is opened with this code: each
 * becomes a rollout with the same id, a target per device with the outcome its
 * commands say, `completed` when every device answered, else `paused`; the
 * fanouts table is gone. Then a migrated, interrupted fan-out is resumed as a
 * rollout (`send --resume ID`, i.e. `rollout resume ID`) and serve's engine
 * delivers to the devices that had no answer.
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { toPublicJwk } from '../../protocol/index.js';
import { initDataDir } from '../../server/data-dir.js';
import { MIGRATIONS, SCHEMA_VERSION } from '../../server/storage/sqlite/schema.js';
import { startProvisionServer } from '../../server/service.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { runServerCli } from './run-cli.js';
import { SimFleet, makeSimDevice, startEmbeddedBroker } from './sim-fleet.js';

/** The fanouts table as migration 1 made it (gone since migration 8). */
const FANOUTS_DDL = `CREATE TABLE fanouts (
  id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, action TEXT NOT NULL, params TEXT NOT NULL, selector TEXT NOT NULL, devices TEXT NOT NULL
) STRICT`;

function addFanout(db: Database.Database, id: string, selector: object, devices: string[], at = 1000): void {
  db.prepare('INSERT INTO fanouts (id, created_at, action, params, selector, devices) VALUES (?, ?, ?, ?, ?, ?)').run(
    id,
    at,
    'update',
    '{"sensor":{"sample_interval_s":60}}',
    JSON.stringify(selector),
    JSON.stringify(devices),
  );
  db.prepare("INSERT INTO audit (at, event, device_id, detail) VALUES (?, 'fanout.create', NULL, ?)").run(
    at,
    JSON.stringify({ fanout_id: id, action: 'update', selector, devices: devices.length }),
  );
}

/** A command of fan-out `fanoutId` as the fan-out recorded it (sent; answered when `ack` is given). */
function addCommand(
  db: Database.Database,
  fanoutId: string,
  deviceId: string,
  seq: number,
  o: { expiresAt: number; ack?: { status: string; code: string }; voided?: boolean; createdAt?: number },
): string {
  const jti = randomUUID();
  const created = o.createdAt ?? 1000 + seq;
  db.prepare(
    `INSERT INTO commands (jti, device_id, action, user_id, params_digest, seq, encryption_kid, sealed, fanout_id, created_at, expires_at, sent_at,
       ack_status, ack_code, acked_at, voided_at) VALUES (?, ?, 'update', 'bob', 'sha256:x', ?, 'k', 'sealed', ?, ?, ?, ?, ?, ?, ?, ?)`,
  ).run(
    jti,
    deviceId,
    seq,
    fanoutId,
    created,
    o.expiresAt,
    created,
    o.ack?.status ?? null,
    o.ack?.code ?? null,
    o.ack ? created + 1 : null,
    o.voided ? created : null,
  );
  db.prepare('UPDATE devices SET next_seq = MAX(next_seq, ?) WHERE id = ?').run(seq + 1, deviceId);
  return jti;
}

interface TargetRow {
  device_id: string;
  state: string;
  jti: string | null;
  attempts: number;
  code: string | null;
}

const targetsOf = (db: Database.Database, id: string): TargetRow[] =>
  db.prepare('SELECT device_id, state, jti, attempts, code FROM rollout_targets WHERE rollout_id = ? ORDER BY device_id').all(id) as TargetRow[];

describe('server: registry migration 8 (fan-outs fold into rollouts)', function () {
  this.timeout(60_000);
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fanout-fold-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('turns each fan-out of a version-7 registry into a rollout with its devices and outcomes, audited; drops fanouts', async () => {
    const path = join(dir, 'registry.sqlite');
    const db = new Database(path);
    db.pragma('foreign_keys = ON');
    for (const [i, sql] of MIGRATIONS.slice(0, 7).entries()) {
      db.exec(sql);
      db.pragma(`user_version = ${i + 1}`);
    }
    for (const id of ['d1', 'd2', 'd3', 'd4', 'd5', 'd6'])
      db.prepare("INSERT INTO devices (id, user_id, state, origin, created_at, updated_at) VALUES (?, 'bob', 'provisioned', 'jwks', 1, 1)").run(id);
    const now = Date.now();
    const hour = 3600_000;
    // Every device answered: completed.
    const done = randomUUID();
    addFanout(db, done, { all: true }, ['d1', 'd2', 'd3'], 1000);
    const done1 = addCommand(db, done, 'd1', 1, { expiresAt: now - hour, ack: { status: 'applied', code: 'OK' } });
    const done2 = addCommand(db, done, 'd2', 1, { expiresAt: now - hour, ack: { status: 'rejected', code: 'E_PARAMS' } });
    const done3 = addCommand(db, done, 'd3', 1, { expiresAt: now - hour, ack: { status: 'rolled_back', code: 'E_HEALTH' } });
    // Interrupted: answered, in flight, expired unanswered, answered after a re-run, never reached, removed since, listed twice.
    const open = randomUUID();
    addFanout(db, open, { userId: 'bob' }, ['d1', 'd2', 'd3', 'd4', 'd5', 'd6', 'gone', 'd6'], 2000);
    const open1 = addCommand(db, open, 'd1', 2, { expiresAt: now - hour, ack: { status: 'failed', code: 'E_IO' } });
    const open2 = addCommand(db, open, 'd2', 2, { expiresAt: now + hour });
    addCommand(db, open, 'd3', 2, { expiresAt: now - hour, createdAt: 3000 });
    addCommand(db, open, 'd3', 3, { expiresAt: now - hour, createdAt: 4000 });
    addCommand(db, open, 'd4', 1, { expiresAt: now - hour, createdAt: 3000 });
    const open4 = addCommand(db, open, 'd4', 2, { expiresAt: now - hour, createdAt: 4000, ack: { status: 'applied', code: 'OK' } });
    // A command voided (never published) does not count as in flight.
    addCommand(db, open, 'd5', 1, { expiresAt: now + hour, voided: true });
    // No devices at all: completed.
    const empty = randomUUID();
    addFanout(db, empty, { all: true }, [], 3000);
    const commandsBefore = db.prepare('SELECT * FROM commands ORDER BY jti').all();
    db.close();

    const storage = openSqliteStorage(path);
    try {
      const sdb = storage.db;
      expect(sdb.pragma('user_version', { simple: true })).to.equal(SCHEMA_VERSION);
      expect(SCHEMA_VERSION).to.be.at.least(8); // 8 folded the fan-outs; later migrations (9: the audit chain, 10: operators, 12: console read models) leave them alone
      expect(sdb.prepare("SELECT name FROM sqlite_master WHERE name IN ('fanouts', 'migration_8_clock')").all()).to.deep.equal([]);
      // The commands are untouched.
      expect(sdb.prepare('SELECT * FROM commands ORDER BY jti').all()).to.deep.equal(commandsBefore);

      const r1 = await storage.rollouts.require(done);
      expect(r1).to.deep.include({
        action: 'update',
        params: { sensor: { sample_interval_s: 60 } },
        selector: { all: true },
        createdAt: 1000,
        state: 'completed',
        stateReason: 'migrated from a fan-out: every device answered',
        ttlSeconds: 300,
        concurrency: 32,
        abortMin: 10,
        planning: false,
        retryOf: null,
      });
      expect(r1.finishedAt).to.be.within(now - 1000, Date.now() + 1000);
      expect(r1.deadlineAt).to.be.within(now + 30 * 24 * hour - 1000, Date.now() + 30 * 24 * hour + 1000);
      expect(targetsOf(sdb, done)).to.deep.equal([
        { device_id: 'd1', state: 'applied', jti: done1, attempts: 1, code: 'OK' },
        { device_id: 'd2', state: 'rejected', jti: done2, attempts: 1, code: 'E_PARAMS' },
        { device_id: 'd3', state: 'rolled_back', jti: done3, attempts: 1, code: 'E_HEALTH' },
      ]);

      const r2 = await storage.rollouts.require(open);
      expect(r2).to.deep.include({ selector: { userId: 'bob' }, state: 'paused', finishedAt: null, createdAt: 2000 });
      expect(r2.stateReason).to.equal(`migrated from a fan-out: resume with provision-server rollout resume ${open}`);
      expect(targetsOf(sdb, open)).to.deep.equal([
        { device_id: 'd1', state: 'failed', jti: open1, attempts: 1, code: 'E_IO' },
        { device_id: 'd2', state: 'sent', jti: open2, attempts: 1, code: null },
        { device_id: 'd3', state: 'pending', jti: null, attempts: 2, code: 'E_TIMEOUT' },
        { device_id: 'd4', state: 'applied', jti: open4, attempts: 2, code: 'OK' },
        { device_id: 'd5', state: 'pending', jti: null, attempts: 1, code: null },
        { device_id: 'd6', state: 'pending', jti: null, attempts: 0, code: null },
        { device_id: 'gone', state: 'pending', jti: null, attempts: 0, code: null },
      ]);
      // The in-flight one is what the engine waits for (its answer settles the target).
      expect(await storage.rollouts.unansweredValid(open, storage.now())).to.deep.equal([{ deviceId: 'd2', jti: open2 }]);

      expect(await storage.rollouts.require(empty)).to.deep.include({ state: 'completed', selector: { all: true } });
      expect(targetsOf(sdb, empty)).to.deep.equal([]);

      const migrated = await storage.audit.query({ event: 'rollout.migrated' });
      expect(migrated.map((e) => e.detail)).to.deep.equal([
        {
          rollout_id: done,
          from: 'fanout',
          action: 'update',
          selector: { all: true },
          state: 'completed',
          devices: 3,
          applied: 1,
          rejected: 1,
          failed: 0,
          rolled_back: 1,
          sent: 0,
          pending: 0,
        },
        {
          rollout_id: open,
          from: 'fanout',
          action: 'update',
          selector: { userId: 'bob' },
          state: 'paused',
          devices: 7,
          applied: 1,
          rejected: 0,
          failed: 1,
          rolled_back: 0,
          sent: 1,
          pending: 4,
        },
        {
          rollout_id: empty,
          from: 'fanout',
          action: 'update',
          selector: { all: true },
          state: 'completed',
          devices: 0,
          applied: 0,
          rejected: 0,
          failed: 0,
          rolled_back: 0,
          sent: 0,
          pending: 0,
        },
      ]);
      // The fan-out's own history and the migration read as the rollout's (audit --rollout ID).
      expect((await storage.audit.query({ rolloutId: open })).map((e) => e.event)).to.deep.equal(['fanout.create', 'rollout.migrated']);
      // The rows of before and those migration 8 wrote are chained (migration 9).
      expect((await storage.audit.verifyChain()).broken).to.equal(undefined);
    } finally {
      await storage.close();
    }
  });

  it('an interrupted fan-out, migrated, is resumed as a rollout: send --resume ID; serve delivers to the devices without an answer only', async () => {
    const broker = await startEmbeddedBroker();
    const dataDir = join(dir, 'data');
    let fleet: SimFleet | undefined;
    let server: Awaited<ReturnType<typeof startProvisionServer>> | undefined;
    try {
      await initDataDir(dataDir, { broker: { url: broker.url } });
      // The registry as version 7 left it: these devices, one interrupted fan-out.
      const sims = await Promise.all(['fold-0', 'fold-1', 'fold-2', 'fold-3'].map((id) => makeSimDevice(id)));
      const path = join(dataDir, 'registry.sqlite');
      const seed = openSqliteStorage(path);
      for (const d of sims)
        await seed.devices.add({
          id: d.id,
          userId: 'bob',
          origin: 'jwks',
          signing: toPublicJwk(d.signing),
          encryption: toPublicJwk(d.encryption),
          state: 'provisioned',
        });
      await seed.close();
      const db = new Database(path);
      db.exec(FANOUTS_DDL);
      // Back to before migration 9 (the audit chain): 8 and 9 run again on open.
      db.exec('DROP TRIGGER audit_chained; DROP TABLE audit_head; ALTER TABLE audit DROP COLUMN prev_hash; ALTER TABLE audit DROP COLUMN hash;');
      const id = randomUUID();
      const now = Date.now();
      addFanout(db, id, { userId: 'bob' }, ['fold-0', 'fold-1', 'fold-2', 'fold-3']);
      const applied = addCommand(db, id, 'fold-0', 1, { expiresAt: now - 60_000, ack: { status: 'applied', code: 'OK' } });
      const stale = addCommand(db, id, 'fold-1', 1, { expiresAt: now - 60_000 });
      const rejected = addCommand(db, id, 'fold-3', 1, { expiresAt: now - 60_000, ack: { status: 'rejected', code: 'E_PARAMS' } });
      // A version-7 registry has none of the later migrations' tables (9: operators).
      db.exec('DROP TABLE operator_sessions; DROP TABLE operator_tokens; DROP TABLE operators;');
      // (12: the console's indexes, device_presence, enrollment_tokens.revoked_at.)
      db.exec(
        'DROP INDEX devices_last_seen; DROP INDEX devices_version; DROP INDEX devices_flagged; DROP INDEX commands_device_created; ' +
          'DROP TABLE device_presence; ALTER TABLE enrollment_tokens DROP COLUMN revoked_at;',
      );
      db.pragma('user_version = 7');
      db.close();

      server = await startProvisionServer({ dataDir, shared: 'off', clientId: `test-server-${Math.random().toString(16).slice(2)}` });
      fleet = await SimFleet.connect(broker.url, { trust: server.data.keys.trust, serverId: server.data.keys.serverId });
      for (const d of sims) fleet.add(d);
      const storage = server.data.storage;
      expect(await storage.rollouts.require(id)).to.deep.include({ state: 'paused', finishedAt: null });
      // Paused: serve's engine sends nothing of it on its own.
      await new Promise((resolve) => setTimeout(resolve, 800));
      expect((await storage.commands.list({ fanoutId: id })).map((c) => c.jti).sort()).to.deep.equal([applied, stale, rejected].sort());
      expect(sims.map((d) => d.received.length)).to.deep.equal([0, 0, 0, 0]);

      const r = await runServerCli(['send', '--resume', id, '--data', dataDir], { timeoutMs: 45_000 });
      // Not every device applied (fold-3 rejected it before): 6, as any rollout.
      expect(r.code, r.stderr).to.equal(6);
      expect(r.stderr).to.contain(`fan-outs are rollouts now; this is: provision-server rollout resume ${id}`);
      const done = await storage.rollouts.require(id);
      expect(done.state).to.equal('completed');
      const targets = await storage.rollouts.targets(id);
      expect(targets.map((t) => [t.deviceId, t.state, t.attempts, t.code])).to.deep.equal([
        ['fold-0', 'applied', 1, 'OK'],
        ['fold-1', 'applied', 2, 'OK'],
        ['fold-2', 'applied', 1, 'OK'],
        ['fold-3', 'rejected', 1, 'E_PARAMS'],
      ]);
      expect(targets[0]?.jti).to.equal(applied);
      expect(targets[3]?.jti).to.equal(rejected);
      // Only the devices without an answer got a command, one each, with the next seq; the answered ones nothing.
      expect(sims.map((d) => d.applied.map((c) => c.seq))).to.deep.equal([[], [2], [1], []]);
      expect(sims.map((d) => d.received.length)).to.deep.equal([0, 1, 1, 0]);
      expect(targets[1]?.jti).to.equal(sims[1]?.applied[0]?.jti);

      // Finished: nothing to resume; an unknown id and a malformed one are refused.
      const again = await runServerCli(['send', '--resume', id, '--data', dataDir]);
      expect(again.code).to.equal(2);
      expect(again.stderr).to.contain('E_ROLLOUT_STATE');
      const unknown = randomUUID();
      const none = await runServerCli(['send', '--resume', unknown, '--data', dataDir]);
      expect(none.code).to.equal(2);
      expect(none.stderr).to.contain('E_NO_ROLLOUT').and.contain(`no fan-out or rollout with id ${unknown}`);
      const bad = await runServerCli(['send', '--resume', 'not-an-id', '--data', dataDir]);
      expect(bad.code).to.equal(2);
      expect(bad.stderr).to.contain('E_USAGE');
      expect(sims.map((d) => d.received.length)).to.deep.equal([0, 1, 1, 0]);
    } finally {
      await fleet?.close().catch(() => undefined);
      await server?.close().catch(() => undefined);
      await broker.close();
    }
  });
});
