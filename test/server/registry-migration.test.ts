/**
 * Migration 7 (agent upgrades) on a registry made by the previous version:
 * the commands and rollout_targets tables are rebuilt (their CHECKs change to
 * take `rolled_back`); every row, index and foreign key survives.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { MIGRATIONS, SCHEMA_VERSION } from '../../server/registry/schema.js';

describe('server: registry migration 7 (releases, rolled_back)', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'registry-mig-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('keeps the commands, rollouts and targets of a version-6 registry and then takes rolled_back', async () => {
    const path = join(dir, 'registry.sqlite');
    const db = new Database(path);
    db.pragma('foreign_keys = ON');
    for (const [i, sql] of MIGRATIONS.slice(0, 6).entries()) {
      db.exec(sql);
      db.pragma(`user_version = ${i + 1}`);
    }
    db.prepare("INSERT INTO devices (id, user_id, state, origin, created_at, updated_at) VALUES ('d1', 'u', 'provisioned', 'jwks', 1, 1)").run();
    db.prepare(
      `INSERT INTO commands (jti, device_id, action, user_id, params_digest, seq, encryption_kid, sealed, fanout_id, created_at, expires_at, sent_at, ack_status, ack_code, voided_at)
       VALUES ('j1', 'd1', 'selftest', 'u', 'x', 1, 'k', 'sealed', 'r1', 1, 2, 1, 'applied', 'OK', NULL)`,
    ).run();
    db.prepare(
      `INSERT INTO rollouts (id, created_at, action, params, selector, ttl_s, deadline_at, abort_min, concurrency, state, updated_at)
       VALUES ('r1', 1, 'selftest', '{}', '{"all":true}', 300, 9, 10, 32, 'running', 1)`,
    ).run();
    db.prepare(
      "INSERT INTO rollout_targets (rollout_id, device_id, state, jti, attempts, updated_at, next_at) VALUES ('r1', 'd1', 'applied', 'j1', 1, 1, 5)",
    ).run();
    expect(() => db.prepare("UPDATE commands SET ack_status = 'rolled_back' WHERE jti = 'j1'").run()).to.throw(/CHECK/);
    db.close();

    const storage = openSqliteStorage(path);
    try {
      expect(storage.db.pragma('user_version', { simple: true })).to.equal(SCHEMA_VERSION);
      const c = await storage.commands.get('j1');
      expect(c).to.deep.include({ deviceId: 'd1', action: 'selftest', ackStatus: 'applied', ackCode: 'OK', fanoutId: 'r1', releaseSha256: null });
      const t = storage.db.prepare('SELECT * FROM rollout_targets').all();
      expect(t).to.deep.equal([
        { rollout_id: 'r1', device_id: 'd1', state: 'applied', jti: 'j1', attempts: 1, code: null, sent_at: null, updated_at: 1, next_at: 5 },
      ]);
      storage.db.prepare("UPDATE commands SET ack_status = 'rolled_back' WHERE jti = 'j1'").run();
      storage.db.prepare("UPDATE rollout_targets SET state = 'rolled_back'").run();
      expect(() => storage.db.prepare("UPDATE rollout_targets SET state = 'bogus'").run()).to.throw(/CHECK/);
      const indexes = (storage.db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'").all() as { name: string }[]).map(
        (r) => r.name,
      );
      expect(indexes).to.include.members([
        'commands_device',
        'commands_fanout',
        'rollout_targets_state',
        'rollout_targets_device',
        'rollout_targets_order',
        'rollout_targets_jti',
        'releases_live',
      ]);
      // The targets still belong to their rollout (ON DELETE CASCADE).
      storage.db.prepare("DELETE FROM rollouts WHERE id = 'r1'").run();
      expect(storage.db.prepare('SELECT COUNT(*) AS n FROM rollout_targets').get()).to.deep.equal({ n: 0 });
      expect(await storage.devices.require('d1')).to.deep.include({ arch: null, agentVersion: null });
    } finally {
      await storage.close();
    }
  });
});
