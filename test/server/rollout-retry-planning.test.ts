/**
 * Rollout retries, interrupted planning, the outlook and the delete
 * confirmation, over a real registry file (no broker: the engine's publish is
 * recorded):
 * - a retry's selector names the original rollout and the states (resolved in
 *   SQL), not a list of ids: bounded in size whatever the rollout's; it targets
 *   exactly the devices that did not apply, and a device removed since drops out;
 * - the audit of a rollout to many named devices carries their count, not the list;
 * - a rollout left planning by a process that stopped (crash, Ctrl-C) is finished
 *   by the engine once its heartbeat is stale: cancelled, nothing sent;
 * - `rollout show` tells targets in the E_EXPIRED backoff from those offline;
 * - a delete never reaches more devices than the plan counted and was confirmed for.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../lib/log.js';
import { KeyRing, generateEncryptionKey, generateSigningKey, toJwkSet, toPublicJwk, type PublicJwk } from '../../protocol/index.js';
import { CommandSender } from '../../server/core/command-sender.js';
import { openSqliteStorage, type SqliteStorage } from '../../server/storage/sqlite/index.js';
import { PLANNING_STALE_MS } from '../../server/storage/records.js';
import { RolloutEngine } from '../../server/rollouts/engine.js';
import { planRollout, startRollout } from '../../server/rollouts/plan.js';
import { outlookView, rolloutOutlook } from '../../server/rollouts/progress.js';
import { RETRIED_STATES, planRetry, startRetry } from '../../server/rollouts/retry.js';
import { formatRolloutSummary, selectorText } from '../../server/rollouts/rollout-views.js';
import type { ServerKeys } from '../../server/keys/server-keys.js';

describe('server: rollout retry selector, interrupted planning, backoff outlook, confirmed delete count', function () {
  this.timeout(30_000);
  let dir: string;
  let storage: SqliteStorage;
  let keys: ServerKeys;
  let board: PublicJwk;
  let skew = 0;
  let n = 0;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rollout-retry-'));
    storage = openSqliteStorage(join(dir, 'registry.sqlite'), { create: true, now: () => Date.now() + skew });
    const [signing, encryption] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
    keys = { dir, serverId: 'retry-server', signing, encryption, trust: toJwkSet([signing, encryption]), decryption: await KeyRing.create([encryption]) };
    board = toPublicJwk(await generateEncryptionKey());
  });
  after(async () => {
    await storage?.close();
    await rm(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    skew = 0;
  });

  /** `count` provisioned devices with an encryption key, never reported, ids `prefix-000`...; returns their ids. */
  function addDevices(prefix: string, count: number): string[] {
    const ids = Array.from({ length: count }, (_, i) => `${prefix}-${String(i).padStart(3, '0')}`);
    const now = storage.now();
    storage.db
      .transaction(() => {
        for (const id of ids) {
          storage.db
            .prepare("INSERT INTO devices (id, user_id, state, origin, created_at, updated_at) VALUES (?, 'u1', 'provisioned', 'jwks', ?, ?)")
            .run(id, now, now);
          storage.db
            .prepare("INSERT INTO device_keys (device_id, kid, use, jwk, status, added_at) VALUES (?, ?, 'enc', ?, 'current', ?)")
            .run(id, `${board.kid}-${n++}`, JSON.stringify(board), now);
        }
      })
      .immediate();
    return ids;
  }

  function engine(published: string[]): RolloutEngine {
    const sender = new CommandSender({
      storage,
      keys,
      topicPrefix: 'provision',
      publish: async (topic) => {
        published.push(topic);
      },
    });
    return new RolloutEngine({ storage, sender, log: silentLogger, tickMs: 20 });
  }

  /** One engine step over every unfinished rollout. */
  async function step(published: string[]): Promise<void> {
    const e = engine(published);
    e.kick();
    await e.idle();
    await e.stop();
  }

  it('a retry stores a compact selector, targets exactly the devices that did not apply, and leaves out a device removed since', async () => {
    const ids = addDevices('rt', 60);
    const orig = await startRollout(storage, await planRollout(storage, keys, { action: 'selftest', selector: { devices: ids } }));
    // 20 applied, 5 in flight, 5 rejected, the other 30 cancelled with the rollout.
    for (const d of ids.slice(0, 20)) await storage.rollouts.move(orig.id, d, ['pending'], 'applied');
    for (const d of ids.slice(20, 25)) await storage.rollouts.move(orig.id, d, ['pending'], 'sent');
    for (const d of ids.slice(25, 30)) await storage.rollouts.move(orig.id, d, ['pending'], 'rejected', { code: 'E_PARAMS' });
    await storage.rollouts.setState(orig.id, ['running'], 'cancelled', 'retry test', 'test');
    await storage.devices.remove('rt-059');

    const rp = await planRetry(storage, keys, orig.id);
    expect(rp.plan.summary.targets).to.equal(34);
    expect({ inFlight: rp.inFlight, removed: rp.removed }).to.deep.equal({ inFlight: 5, removed: 1 });
    const r = await startRetry(storage, rp);
    expect(r.retryOf).to.equal(orig.id);
    expect(r.selector).to.deep.equal({ retryOf: orig.id, states: [...RETRIED_STATES] });
    const stored = storage.db.prepare('SELECT LENGTH(selector) AS n FROM rollouts WHERE id = ?').get(r.id) as { n: number };
    expect(stored.n, 'the stored selector').to.be.below(200);
    expect((await storage.rollouts.targets(r.id)).map((t) => t.deviceId)).to.deep.equal(ids.slice(25, 59));
    expect((await storage.rollouts.counts(r.id)).pending).to.equal(34);
    expect(selectorText(r)).to.equal(`retry of ${orig.id} (${RETRIED_STATES.join(', ')})`);
    const audit = await storage.audit.log({ limit: 10 });
    const created = audit.find((a) => a.event === 'rollout.create' && a.detail.rollout_id === r.id);
    expect(created?.detail).to.include({ devices: 34 });
    expect(JSON.stringify(created?.detail).length, 'the rollout.create audit detail').to.be.below(400);
    expect(audit.find((a) => a.event === 'rollout.retry' && a.detail.rollout_id === r.id)?.detail).to.include({
      retry_of: orig.id,
      devices: 34,
      in_flight_left_out: 5,
      removed_left_out: 1,
    });
    await storage.rollouts.setState(r.id, ['running'], 'cancelled', 'retry test', 'test');
  });

  it('the audit of a rollout to many named devices carries their count, not the list', async () => {
    const ids = addDevices('named', 25);
    const r = await startRollout(storage, await planRollout(storage, keys, { action: 'selftest', selector: { devices: ids } }));
    const created = (await storage.audit.log({ limit: 10 })).find((a) => a.event === 'rollout.create' && a.detail.rollout_id === r.id);
    expect(created?.detail).to.deep.include({ devices: 25, selector: { devices_named: 25 } });
    // The rollout itself keeps its list (it is what it goes to).
    expect((await storage.rollouts.require(r.id)).selector).to.deep.equal({ devices: ids });
    await storage.rollouts.setState(r.id, ['running'], 'cancelled', 'audit test', 'test');
  });

  it('a rollout left planning (its process stopped while recording targets) is finished by the engine once its heartbeat is stale: cancelled, nothing sent', async () => {
    const ids = addDevices('plan', 3);
    const r = await storage.rollouts.createFromSelector(
      (await planRollout(storage, keys, { action: 'selftest', selector: { devices: ids }, deliverWithinMs: 3600_000 })).spec,
      { needsDeviceUser: true },
    );
    // As a crash leaves it: targets recorded, the rollout never released to the engine.
    storage.db.prepare('UPDATE rollouts SET planning = 1, updated_at = ? WHERE id = ?').run(storage.now(), r.id);
    const published: string[] = [];
    await step(published);
    expect(await storage.rollouts.require(r.id)).to.include({ planning: true, finishedAt: null, state: 'running' });
    skew = PLANNING_STALE_MS + 1000;
    await step(published);
    const done = await storage.rollouts.require(r.id);
    expect(done).to.include({ planning: false, state: 'cancelled', stateReason: 'planning interrupted: 3 target(s) recorded, nothing sent' });
    expect(done.finishedAt).to.be.a('number');
    expect((await storage.rollouts.counts(r.id)).cancelled).to.equal(3);
    expect(published).to.deep.equal([]);
    expect(await storage.commands.list({ fanoutId: r.id })).to.deep.equal([]);
  });

  it('rollout show counts targets in the E_EXPIRED backoff apart from the boards offline', async () => {
    const ids = addDevices('bo', 3);
    const r = await startRollout(storage, await planRollout(storage, keys, { action: 'selftest', selector: { devices: ids }, ratePerMin: 1 }));
    const now = storage.now();
    storage.db
      .prepare("UPDATE rollout_targets SET attempts = 1, code = 'E_EXPIRED', next_at = ? WHERE rollout_id = ? AND device_id = ?")
      .run(now + 60_000, r.id, 'bo-001');
    const counts = await storage.rollouts.counts(r.id);
    const outlook = await rolloutOutlook(storage, await storage.rollouts.require(r.id), counts, now);
    expect(outlookView(outlook)).to.include({ waiting_online: 2, waiting_offline: 0, waiting_backoff: 1 });
    expect(formatRolloutSummary(await storage.rollouts.require(r.id), counts, [], outlook))
      .to.match(/^waiting, offline\s+0$/m)
      .and.to.match(/^waiting, backoff after E_EXPIRED\s+1$/m);
    await storage.rollouts.setState(r.id, ['running'], 'cancelled', 'outlook test', 'test');
  });

  it('a delete whose selector matches more devices when it is recorded than the plan counted (and was confirmed for) is refused, nothing sent', async () => {
    const first = addDevices('wipe', 3);
    for (const d of first) await storage.devices.addTags(d, ['wipe']);
    const plan = await planRollout(storage, keys, { action: 'delete', selector: { tag: 'wipe' } });
    expect(plan.summary.targets).to.equal(3);
    // Tagged between the confirmation and the start.
    for (const d of addDevices('wipe-late', 2)) await storage.devices.addTags(d, ['wipe']);
    const before = new Set((await storage.rollouts.list({ limit: 1000 })).map((x) => x.id));
    const err = await startRollout(storage, plan).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).to.have.property('code', 'E_CONFIRM');
    const made = (await storage.rollouts.list({ limit: 1000 })).filter((x) => !before.has(x.id));
    for (const r of made) {
      expect(r).to.include({ state: 'cancelled', planning: false });
      expect(r.finishedAt).to.be.a('number');
      expect(
        (await storage.rollouts.counts(r.id)).pending + (await storage.rollouts.counts(r.id)).sent + (await storage.rollouts.counts(r.id)).sending,
      ).to.equal(0);
      expect(await storage.commands.list({ fanoutId: r.id })).to.deep.equal([]);
    }
    const published: string[] = [];
    skew = 1000;
    await step(published);
    expect(published).to.deep.equal([]);
    expect(await Promise.all(first.map(async (d) => (await storage.devices.require(d)).state))).to.deep.equal(['provisioned', 'provisioned', 'provisioned']);
  });

  it('a delete to as many devices as were planned is recorded as before', async () => {
    const ids = addDevices('wipe-ok', 2);
    for (const d of ids) await storage.devices.addTags(d, ['wipe-ok']);
    const r = await startRollout(storage, await planRollout(storage, keys, { action: 'delete', selector: { tag: 'wipe-ok' } }));
    expect((await storage.rollouts.counts(r.id)).pending).to.equal(2);
    await storage.rollouts.setState(r.id, ['running'], 'cancelled', 'delete test', 'test');
  });
});
