/**
 * The PostgreSQL RolloutStore and LeaseStore against a real PostgreSQL (one
 * throwaway cluster for the file, a fresh database per test). Devices and
 * commands are inserted with plain SQL (their stores are another concern).
 * "Two machines" are two PgDb pools on one database, each with its own
 * stores, sharing an injected clock: the lease's fencing (a new holder after
 * expiry fences the old one's claims and mark-sents, and voids its command)
 * and concurrent claims of the same targets (each claimed once) are checked
 * across them. Skipped without PostgreSQL unless REQUIRE_POSTGRES=1.
 */
import { expect } from 'chai';
import { CodedError } from '../../protocol/index.js';
import { RegistryError } from '../../server/storage/errors.js';
import { PLANNING_STALE_MS, type Lease, type RolloutSpec } from '../../server/storage/records.js';
import { PgDb } from '../../server/storage/postgres/db.js';
import { PgLeaseStore } from '../../server/storage/postgres/leases.js';
import { PgRolloutStore } from '../../server/storage/postgres/rollouts.js';
import { migratePostgres } from '../../server/storage/postgres/schema.js';
import { NO_POSTGRES, postgresBin, postgresRequired, startPgCluster, type PgCluster } from '../helpers/pg-cluster.js';

const T0 = 1_800_000_000_000;

interface Machine {
  db: PgDb;
  rollouts: PgRolloutStore;
  leases: PgLeaseStore;
}

interface DeviceOptions {
  userId?: string | null;
  state?: string;
  encKey?: boolean;
  lastSeenAt?: number | null;
  presence?: 'online' | 'offline' | null;
  intervalS?: number | null;
  tags?: string[];
}

function spec(selector: RolloutSpec['selector'], action = 'update'): RolloutSpec {
  return { action, params: { settings: { a: 1 } }, selector, ttlSeconds: 600, deadlineAt: T0 + 3_600_000, abortMin: 10, concurrency: 32, ratePerMin: 60 };
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection');
}

describe('storage/postgres: rollouts and the engine lease (PgRolloutStore, PgLeaseStore)', function () {
  this.timeout(30_000);
  let cluster: PgCluster | undefined;
  let url: string;
  let clock: number;
  const now = (): number => clock;
  const opened: PgDb[] = [];
  let a: Machine;
  let auditMark = 0;

  async function machine(clockOf: () => number = now): Promise<Machine> {
    const db = new PgDb(url);
    opened.push(db);
    return { db, rollouts: new PgRolloutStore(db, clockOf), leases: new PgLeaseStore(db, clockOf) };
  }

  async function device(id: string, o: DeviceOptions = {}): Promise<void> {
    await a.db.run(
      `INSERT INTO devices (id, user_id, state, origin, created_at, updated_at, last_seen_at, presence, report_interval_s)
       VALUES ($1, $2, $3, 'test', $4, $4, $5, $6, $7)`,
      [id, o.userId === undefined ? 'u1' : o.userId, o.state ?? 'provisioned', T0, o.lastSeenAt ?? null, o.presence ?? null, o.intervalS ?? null],
    );
    if (o.encKey ?? true)
      await a.db.run("INSERT INTO device_keys (device_id, kid, use, jwk, status, added_at) VALUES ($1, $2, 'enc', '{}', 'current', $3)", [id, `${id}-enc`, T0]);
    for (const tag of o.tags ?? []) await a.db.run('INSERT INTO device_tags (device_id, tag, added_at) VALUES ($1, $2, $3)', [id, tag, T0]);
  }

  let seq = 0;
  async function command(jti: string, deviceId: string, rolloutId: string, o: { createdAt?: number; expiresAt?: number; action?: string } = {}): Promise<void> {
    await a.db.run(
      `INSERT INTO commands (jti, device_id, action, user_id, params_digest, seq, encryption_kid, sealed, fanout_id, created_at, expires_at)
       VALUES ($1, $2, $3, 'u1', 'digest', $4, 'kid', 'sealed', $5, $6, $7)`,
      [jti, deviceId, o.action ?? 'update', ++seq, rolloutId, o.createdAt ?? clock, o.expiresAt ?? clock + 600_000],
    );
  }

  async function commandRow(jti: string): Promise<{ voided_at: number | null }> {
    return (await a.db.one<{ voided_at: number | null }>('SELECT voided_at FROM commands WHERE jti = $1', [jti])) as { voided_at: number | null };
  }

  async function auditRows(prefix = 'rollout.'): Promise<{ event: string; detail: Record<string, unknown>; at: number }[]> {
    const rows = await a.db.q<{ event: string; detail: string; at: number }>(
      'SELECT event, detail, at FROM audit WHERE id > $1 AND event LIKE $2 ORDER BY id',
      [auditMark, `${prefix}%`],
    );
    return rows.map((r) => ({ event: r.event, at: r.at, detail: JSON.parse(r.detail) as Record<string, unknown> }));
  }

  before(async function () {
    if (!postgresBin()) {
      if (postgresRequired()) throw new Error(NO_POSTGRES);
      console.log(`    skipped: ${NO_POSTGRES}`);
      this.skip();
    }
    cluster = await startPgCluster();
    // One database for the file (a new one per test costs ~1 s on a loaded machine): emptied before each test.
    url = await cluster.createDatabase();
    const db = new PgDb(url);
    await migratePostgres(db, { create: true });
    await db.end();
  });

  after(async () => {
    await cluster?.stop();
  });

  beforeEach(async () => {
    clock = T0;
    seq = 0;
    a = await machine();
    for (const table of ['rollout_targets', 'rollouts', 'commands', 'device_tags', 'device_keys', 'devices', 'leases']) await a.db.run(`DELETE FROM ${table}`);
    // The audit log is append-only: each test reads the rows after this mark.
    auditMark = (await a.db.one<{ id: number | null }>('SELECT MAX(id) AS id FROM audit'))?.id ?? 0;
  });

  afterEach(async () => {
    await Promise.all(opened.splice(0).map((db) => db.end()));
  });

  it('create: targets pending, audited rollout.create; none: completed at once with rollout.finished', async () => {
    await device('d1');
    await device('d2');
    const r = await a.rollouts.create(spec({ devices: ['d1', 'd2'] }), ['d2', 'd1']);
    expect(r).to.include({ action: 'update', state: 'running', planning: false, stateReason: null, finishedAt: null, retryOf: null, createdAt: T0 });
    expect(r).to.include({ ttlSeconds: 600, deadlineAt: T0 + 3_600_000, ratePerMin: 60, abortMin: 10, concurrency: 32 });
    expect(r.params).to.deep.equal({ settings: { a: 1 } });
    expect(r.selector).to.deep.equal({ devices: ['d1', 'd2'] });
    expect((await a.rollouts.counts(r.id)).pending).to.equal(2);
    expect((await a.rollouts.targets(r.id)).map((t) => [t.deviceId, t.state, t.attempts, t.updatedAt])).to.deep.equal([
      ['d1', 'pending', 0, T0],
      ['d2', 'pending', 0, T0],
    ]);
    const empty = await a.rollouts.create(spec({ tag: 'none' }), []);
    expect(empty).to.include({ state: 'completed', stateReason: 'no devices matched', finishedAt: T0 });
    const audit = await auditRows();
    expect(audit.map((x) => x.event)).to.deep.equal(['rollout.create', 'rollout.create', 'rollout.finished']);
    expect(audit[0]?.detail).to.deep.equal({
      rollout_id: r.id,
      action: 'update',
      selector: { devices: ['d1', 'd2'] },
      devices: 2,
      deadline_at: new Date(T0 + 3_600_000).toISOString(),
      rate_per_min: 60,
      abort_percent: null,
    });
    expect(audit[2]?.detail).to.include({ rollout_id: empty.id, state: 'completed', reason: 'no devices matched', pending: 0, applied: 0 });
    expect((await a.rollouts.list()).map((x) => x.id)).to.have.members([r.id, empty.id]);
    expect((await a.rollouts.list({ unfinished: true })).map((x) => x.id)).to.deep.equal([r.id]);
    const missing = await rejection(a.rollouts.require('nope'));
    expect(missing).to.be.instanceOf(RegistryError).with.property('code', 'E_NO_ROLLOUT');
    expect(missing.message).to.equal('no rollout with id nope');
    expect(await a.rollouts.get('nope')).to.equal(undefined);
  });

  it('createFromSelector: tags, user, all (usable only), in chunks; not-sendable devices recorded `not sent` with their code', async () => {
    for (let i = 0; i < 7; i++) await device(`t${i}`, { tags: ['edge'] });
    await device('tdec', { tags: ['edge'], state: 'decommissioned' });
    await device('tnokey', { tags: ['edge'], encKey: false });
    await device('other', { userId: 'u2' });
    await device('nouser', { userId: null });
    const tagged = await a.rollouts.createFromSelector(spec({ tag: 'edge' }), { needsDeviceUser: true, chunk: 3 });
    expect(tagged).to.include({ planning: false, state: 'running' });
    expect((await a.rollouts.targets(tagged.id)).map((t) => t.deviceId)).to.deep.equal(['t0', 't1', 't2', 't3', 't4', 't5', 't6']);
    const byUser = await a.rollouts.createFromSelector(spec({ userId: 'u2' }), { needsDeviceUser: true });
    expect((await a.rollouts.targets(byUser.id)).map((t) => t.deviceId)).to.deep.equal(['other']);
    const all = await a.rollouts.createFromSelector(spec({ all: true }), { needsDeviceUser: true, chunk: 4 });
    const targets = await a.rollouts.targets(all.id);
    expect(targets).to.have.length(9);
    expect(targets.find((t) => t.deviceId === 'nouser')).to.include({ state: 'not sent', code: 'E_USAGE' });
    expect((await a.rollouts.counts(all.id))['not sent']).to.equal(1);
    // Named devices are taken as named: the decommissioned one and the one without a key are `not sent`.
    const named = await a.rollouts.createFromSelector(spec({ devices: ['tnokey', 'tdec', 't1'] }), { needsDeviceUser: false });
    expect((await a.rollouts.targets(named.id)).map((t) => [t.deviceId, t.state, t.code])).to.deep.equal([
      ['t1', 'pending', null],
      ['tdec', 'not sent', 'E_DECOMMISSIONED'],
      ['tnokey', 'not sent', 'E_NO_KEY'],
    ]);
    // Nothing that can be sent to: completed at once.
    const none = await a.rollouts.createFromSelector(spec({ devices: ['tdec'] }), { needsDeviceUser: false });
    expect(none).to.include({ state: 'completed', stateReason: 'no target could be sent to' });
    const nothing = await a.rollouts.createFromSelector(spec({ tag: 'absent' }), { needsDeviceUser: false });
    expect(nothing).to.include({ state: 'completed', stateReason: 'no devices matched' });
    const creates = (await auditRows('rollout.create')).map((x) => x.detail.devices);
    expect(creates).to.deep.equal([7, 1, 9, 3, 1, 0]);
  });

  it('createFromSelector: unknown named devices are all named at once (E_NO_DEVICE), a bad tag is E_BAD_TAG; nothing recorded', async () => {
    await device('d1');
    const one = await rejection(a.rollouts.createFromSelector(spec({ devices: ['d1', 'ghost'] }), { needsDeviceUser: false }));
    expect(one).to.be.instanceOf(RegistryError).with.property('code', 'E_NO_DEVICE');
    expect(one.message).to.equal('device ghost is not registered');
    const ids = Array.from({ length: 23 }, (_, i) => `g${String(i).padStart(2, '0')}`);
    const many = await rejection(a.rollouts.createFromSelector(spec({ devices: ['d1', ...ids] }), { needsDeviceUser: false }));
    expect(many.message).to.equal(`23 devices are not registered: ${ids.slice(0, 20).join(', ')}, ... (3 more)`);
    const summary = await rejection(a.rollouts.summarize({ devices: ['x', 'd1', 'y'] }, false, clock));
    expect(summary.message).to.equal('2 devices are not registered: x, y');
    const tag = await rejection(a.rollouts.createFromSelector(spec({ tag: 'bad tag!' }), { needsDeviceUser: false }));
    expect(tag).to.be.instanceOf(RegistryError).with.property('code', 'E_BAD_TAG');
    expect(await a.rollouts.list()).to.deep.equal([]);
    expect(await auditRows()).to.deep.equal([]);
  });

  it('createFromSelector: retryOf (its targets in those states, audited rollout.retry) and maxTargets (E_CONFIRM, cancelled before release)', async () => {
    for (const id of ['a', 'b', 'c', 'd']) await device(id);
    const first = await a.rollouts.create(spec({ all: true }), ['a', 'b', 'c', 'd']);
    await a.rollouts.move(first.id, 'a', ['pending'], 'failed', { code: 'E_X' });
    await a.rollouts.move(first.id, 'b', ['pending'], 'expired');
    await a.rollouts.move(first.id, 'c', ['pending'], 'applied');
    const retry = await a.rollouts.createFromSelector(spec({ retryOf: first.id, states: ['failed', 'expired'] }), {
      needsDeviceUser: true,
      retryOf: { id: first.id, inFlightLeftOut: 1 },
    });
    expect(retry.retryOf).to.equal(first.id);
    expect((await a.rollouts.targets(retry.id)).map((t) => t.deviceId)).to.deep.equal(['a', 'b']);
    expect((await auditRows('rollout.retry'))[0]?.detail).to.deep.equal({
      rollout_id: retry.id,
      retry_of: first.id,
      devices: 2,
      in_flight_left_out: 1,
      removed_left_out: 0,
    });
    await a.db.run("DELETE FROM devices WHERE id = 'a'");
    expect(await a.rollouts.removedTargets(first.id, ['failed', 'expired'])).to.equal(1);
    expect(await a.rollouts.removedTargets(first.id, ['applied'])).to.equal(0);

    const err = await rejection(a.rollouts.createFromSelector(spec({ all: true }, 'delete'), { needsDeviceUser: true, maxTargets: 2, chunk: 2 }));
    expect(err).to.be.instanceOf(CodedError).with.property('code', 'E_CONFIRM');
    expect(err.message).to.match(/^delete was confirmed for 2 device\(s\), but the selector now matches more: nothing sent \(rollout .+ cancelled\)/);
    const cancelled = (await a.rollouts.list()).find((r) => r.action === 'delete');
    expect(cancelled).to.include({ state: 'cancelled', planning: false });
    expect(cancelled?.stateReason).to.equal('refused: the selector now matches more than the 2 device(s) confirmed (E_CONFIRM); nothing sent');
    expect(cancelled?.finishedAt).to.equal(T0);
    const targets = await a.rollouts.targets(cancelled?.id as string);
    expect(targets.map((t) => [t.state, t.code])).to.deep.equal([
      ['cancelled', 'E_CONFIRM'],
      ['cancelled', 'E_CONFIRM'],
      ['cancelled', 'E_CONFIRM'],
    ]);
    const finished = (await auditRows('rollout.finished')).at(-1)?.detail;
    expect(finished).to.include({ rollout_id: cancelled?.id, state: 'cancelled', cancelled: 3 });
    // No rollout.create for the refused one.
    expect((await auditRows('rollout.create')).map((x) => x.detail.rollout_id)).to.not.include(cancelled?.id);
    // Exactly at the confirmed count: released.
    const ok = await a.rollouts.createFromSelector(spec({ all: true }, 'delete'), { needsDeviceUser: true, maxTargets: 3 });
    expect(ok).to.include({ state: 'running', planning: false });
  });

  it('deliverable and pendingBreakdown: presence (REACHABLE_NOW), re-send backoff, a removed device', async () => {
    await device('never');
    await device('online', { presence: 'online', lastSeenAt: T0 - 10_000, intervalS: 60 });
    await device('stale', { presence: 'online', lastSeenAt: T0 - 200_000, intervalS: 60 });
    await device('offline', { presence: 'offline', lastSeenAt: T0 - 1000, intervalS: 60 });
    await device('backoff');
    await device('gone');
    const r = await a.rollouts.create(spec({ all: true }), ['never', 'online', 'stale', 'offline', 'backoff', 'gone']);
    await a.rollouts.move(r.id, 'backoff', ['pending'], 'pending', { nextAt: T0 + 5000 });
    await a.db.run("DELETE FROM devices WHERE id = 'gone'");
    expect((await a.rollouts.deliverable(r.id, clock, 10)).map((t) => t.deviceId)).to.deep.equal(['gone', 'never', 'online']);
    expect((await a.rollouts.deliverable(r.id, clock, 2)).map((t) => t.deviceId)).to.deep.equal(['gone', 'never']);
    expect(await a.rollouts.deliverable(r.id, clock, 0)).to.deep.equal([]);
    expect(await a.rollouts.pendingBreakdown(r.id, clock)).to.deep.equal({ deliverable: 3, backoff: 1, offline: 2, backoffUntil: T0 + 5000 });
    expect((await a.rollouts.deliverable(r.id, T0 + 5000, 10)).map((t) => t.deviceId)).to.include('backoff');
    expect(await a.rollouts.pendingBreakdown(r.id, T0 + 5000)).to.include({ backoff: 0, backoffUntil: null });
    expect((await a.rollouts.pendingFor('never')).length).to.equal(1);
  });

  it('claim and markSent under a live lease; in flight, answered, unanswered expired, lastSentAt, expireAll', async () => {
    await device('d1');
    await device('d2');
    const r = await a.rollouts.create(spec({ all: true }), ['d1', 'd2']);
    const lease = (await a.leases.take('rollouts', 'A', 30_000)) as Lease;
    expect(lease).to.deep.equal({ name: 'rollouts', holder: 'A', generation: 1, ttlMs: 30_000 });
    expect(await a.rollouts.claim(r.id, 'd1', lease)).to.equal(true);
    expect(await a.rollouts.claim(r.id, 'd1', lease)).to.equal(false);
    expect((await a.rollouts.targets(r.id, { states: ['sending'] }))[0]).to.include({ deviceId: 'd1', attempts: 1, nextAt: null });
    expect(await a.rollouts.inFlight(r.id, clock)).to.equal(1);
    expect(await a.rollouts.lastSentAt(r.id)).to.equal(null);
    clock += 1000;
    await command('j1', 'd1', r.id);
    expect(await a.rollouts.markSent(r.id, 'd1', 'j1', lease)).to.equal('sent');
    // Proof of life: the lease was renewed to now + ttl.
    expect((await a.db.one<{ expires_at: number }>("SELECT expires_at FROM leases WHERE name = 'rollouts'"))?.expires_at).to.equal(clock + 30_000);
    expect((await a.rollouts.targets(r.id, { states: ['sent'] }))[0]).to.include({ deviceId: 'd1', jti: 'j1', sentAt: clock });
    expect(await a.rollouts.lastSentAt(r.id)).to.equal(clock);
    expect(await a.rollouts.unansweredValid(r.id, clock)).to.deep.equal([{ deviceId: 'd1', jti: 'j1' }]);
    expect(await a.rollouts.inFlight(r.id, clock)).to.equal(1);
    expect(await a.rollouts.unansweredExpired('d1', clock + 600_000)).to.deep.equal([{ rolloutId: r.id, jti: 'j1' }]);
    expect(await a.rollouts.unansweredExpired('d1', clock)).to.deep.equal([]);
    await a.db.run("UPDATE commands SET ack_status = 'rejected', ack_code = 'E_NOPE' WHERE jti = 'j1'");
    expect(await a.rollouts.answered(r.id)).to.deep.equal([{ deviceId: 'd1', jti: 'j1', status: 'rejected', code: 'E_NOPE', attempts: 1 }]);
    expect(await a.rollouts.unansweredValid(r.id, clock)).to.deep.equal([]);
    // A leased move checks the lease too.
    expect(await a.rollouts.move(r.id, 'd1', ['sent'], 'rejected', { code: 'E_NOPE', lease })).to.equal(true);
    expect(await a.rollouts.expireAll(r.id)).to.equal(1);
    expect((await a.rollouts.targets(r.id, { states: ['expired'] }))[0]).to.include({ deviceId: 'd2', code: 'E_DEADLINE' });
  });

  it('fencing across two machines: a new holder after expiry (higher generation) fences the old one, whose command is voided; reclaimSending', async () => {
    for (const id of ['x', 'y', 'z', 'w']) await device(id);
    const b = await machine();
    const r = await a.rollouts.create(spec({ all: true }), ['w', 'x', 'y', 'z']);
    const la = (await a.leases.take('rollouts', 'A', 1000)) as Lease;
    expect(await b.leases.take('rollouts', 'B', 1000)).to.equal(undefined);
    expect(await b.leases.holder('rollouts')).to.equal('A');
    for (const id of ['w', 'x', 'y']) expect(await a.rollouts.claim(r.id, id, la)).to.equal(true);
    // A recorded commands for x (older, never published, and the newest) and for w (expired), then stalled past its lease.
    await command('jx-old', 'x', r.id, { createdAt: clock - 10 });
    await command('jx', 'x', r.id);
    await command('jw', 'w', r.id, { expiresAt: clock + 1500 });
    clock += 2000;
    expect(await a.leases.renew(la)).to.equal(false);
    const lb = (await b.leases.take('rollouts', 'B', 30_000)) as Lease;
    expect(lb.generation).to.equal(2);
    expect(await a.leases.holder('rollouts')).to.equal('B');
    // A's claim and mark-sent change nothing now; its command for y is voided.
    expect(await a.rollouts.claim(r.id, 'z', la)).to.equal(false);
    await command('jy', 'y', r.id);
    expect(await a.rollouts.markSent(r.id, 'y', 'jy', la)).to.equal('fenced');
    expect((await commandRow('jy')).voided_at).to.equal(clock);
    expect((await a.rollouts.targets(r.id, { states: ['sending'] })).map((t) => t.deviceId)).to.deep.equal(['w', 'x', 'y']);
    expect(await a.rollouts.move(r.id, 'w', ['sending'], 'not sent', { code: 'E_X', lease: la })).to.equal(false);
    // A reclaim under the stale lease does nothing.
    expect(await a.rollouts.reclaimSending(r.id, la)).to.deep.equal({ adopted: 0, requeued: 0 });
    // B reclaims: x adopts its newest valid command (the older one voided), w's expired and y's voided ones are not adopted.
    expect(await b.rollouts.reclaimSending(r.id, lb)).to.deep.equal({ adopted: 1, requeued: 2 });
    const byId = new Map((await b.rollouts.targets(r.id)).map((t) => [t.deviceId, t]));
    expect(byId.get('x')).to.include({ state: 'sent', jti: 'jx', sentAt: clock });
    expect(byId.get('w')).to.include({ state: 'pending', jti: null });
    expect(byId.get('y')).to.include({ state: 'pending' });
    expect((await commandRow('jx-old')).voided_at).to.equal(clock);
    expect((await commandRow('jx')).voided_at).to.equal(null);
    expect((await commandRow('jw')).voided_at).to.equal(clock);
    // B drives now; A's mark-sent of x (which B adopted) is fenced but does not void the adopted command.
    expect(await a.rollouts.markSent(r.id, 'x', 'jx', la)).to.equal('fenced');
    expect((await commandRow('jx')).voided_at).to.equal(null);
    expect(await b.rollouts.claim(r.id, 'z', lb)).to.equal(true);
    await command('jz', 'z', r.id);
    expect(await b.rollouts.markSent(r.id, 'z', 'jz', lb)).to.equal('sent');
    // A takes it back only after B's lease lapses, with yet another generation.
    expect(await a.leases.take('rollouts', 'A', 1000)).to.equal(undefined);
    await b.leases.release('rollouts', 'B');
    expect(await a.leases.holder('rollouts')).to.equal(undefined);
    expect(await a.leases.take('rollouts', 'A', 1000)).to.deep.include({ generation: 3 });
    expect(await b.leases.renew(lb)).to.equal(false);
  });

  it('markSent of a rollout stopped meanwhile: paused -> pending, cancelled -> E_CANCELLED, the command voided; reclaimSending of a stopped rollout', async () => {
    for (const id of ['p1', 'p2', 'p3']) await device(id);
    const r = await a.rollouts.create(spec({ all: true }), ['p1', 'p2', 'p3']);
    const lease = (await a.leases.take('rollouts', 'A', 30_000)) as Lease;
    for (const id of ['p1', 'p2', 'p3']) expect(await a.rollouts.claim(r.id, id, lease)).to.equal(true);
    await a.rollouts.setState(r.id, ['running'], 'paused', 'operator', 'cli');
    await command('j1', 'p1', r.id);
    expect(await a.rollouts.markSent(r.id, 'p1', 'j1', lease)).to.equal('stopped');
    expect((await a.rollouts.targets(r.id, { states: ['pending'] })).map((t) => t.deviceId)).to.deep.equal(['p1']);
    expect((await commandRow('j1')).voided_at).to.equal(clock);
    // Paused: no claim.
    expect(await a.rollouts.claim(r.id, 'p1', lease)).to.equal(false);
    await a.rollouts.setState(r.id, ['paused'], 'cancelled', 'enough', 'api');
    expect((await a.rollouts.targets(r.id, { states: ['cancelled'] })).map((t) => [t.deviceId, t.code])).to.deep.equal([['p1', 'E_CANCELLED']]);
    await command('j2', 'p2', r.id);
    expect(await a.rollouts.markSent(r.id, 'p2', 'j2', lease)).to.equal('stopped');
    expect((await a.rollouts.targets(r.id)).find((t) => t.deviceId === 'p2')).to.include({ state: 'cancelled', code: 'E_CANCELLED' });
    await command('j3', 'p3', r.id);
    expect(await a.rollouts.reclaimSending(r.id, lease)).to.deep.equal({ adopted: 0, requeued: 1 });
    expect((await a.rollouts.targets(r.id)).find((t) => t.deviceId === 'p3')).to.include({ state: 'cancelled', code: 'E_CANCELLED' });
    expect((await commandRow('j3')).voided_at).to.equal(clock);
  });

  it('setState and finish: E_ROLLOUT_STATE, audits (pause/resume/abort, finished with counts), a finished state kept', async () => {
    await device('d1');
    await device('d2');
    const r = await a.rollouts.create(spec({ all: true }), ['d1', 'd2']);
    clock += 5;
    const paused = await a.rollouts.setState(r.id, ['running'], 'paused', 'look first', 'cli');
    expect(paused).to.include({ state: 'paused', stateReason: 'look first', updatedAt: clock });
    const err = await rejection(a.rollouts.setState(r.id, ['running'], 'paused', 'again', 'cli'));
    expect(err).to.be.instanceOf(RegistryError).with.property('code', 'E_ROLLOUT_STATE');
    expect(err.message).to.equal(`rollout ${r.id} is paused: it cannot be paused (only when running)`);
    const resumeErr = await rejection(a.rollouts.setState(r.id, ['cancelled'], 'running', 'x', 'cli'));
    expect(resumeErr.message).to.equal(`rollout ${r.id} is paused: it cannot be resumed (only when cancelled)`);
    await a.rollouts.setState(r.id, ['paused'], 'running', 'go on', 'api');
    await a.rollouts.move(r.id, 'd1', ['pending'], 'applied');
    await a.rollouts.setState(r.id, ['running', 'paused'], 'aborted', 'too many failures', 'engine');
    expect((await a.rollouts.targets(r.id)).map((t) => [t.state, t.code])).to.deep.equal([
      ['applied', null],
      ['cancelled', 'E_ABORTED'],
    ]);
    await a.rollouts.finish(r.id, 'completed', 'every target answered or ended');
    const done = await a.rollouts.require(r.id);
    // Aborted meanwhile: it ends aborted, with the abort's reason.
    expect(done).to.include({ state: 'aborted', stateReason: 'too many failures', finishedAt: clock });
    await a.rollouts.finish(r.id, 'completed', 'twice');
    expect((await a.rollouts.require(r.id)).finishedAt).to.equal(clock);
    const audit = await auditRows();
    expect(audit.map((x) => x.event)).to.deep.equal([
      'rollout.create',
      'rollout.pause',
      'rollout.resume',
      'rollout.abort',
      'rollout.finished',
      'rollout.finished',
    ]);
    expect(audit[1]?.detail).to.deep.equal({ rollout_id: r.id, reason: 'look first', by: 'cli' });
    expect(audit[4]?.detail).to.deep.equal({
      rollout_id: r.id,
      state: 'aborted',
      reason: 'every target answered or ended',
      pending: 0,
      sending: 0,
      sent: 0,
      applied: 1,
      rejected: 0,
      failed: 0,
      rolled_back: 0,
      expired: 0,
      cancelled: 1,
      'not sent': 0,
    });
  });

  it('finishInterruptedPlanning: a planning rollout whose heartbeat is stale is cancelled; a live one is left', async () => {
    await device('d1');
    await device('d2');
    const r = await a.rollouts.create(spec({ all: true }), ['d1', 'd2']);
    await a.db.run('UPDATE rollouts SET planning = 1 WHERE id = $1', [r.id]);
    clock += PLANNING_STALE_MS;
    expect(await a.rollouts.finishInterruptedPlanning(r.id)).to.equal(undefined);
    clock += 1;
    expect(await a.rollouts.finishInterruptedPlanning(r.id)).to.equal('planning interrupted: 2 target(s) recorded, nothing sent');
    expect(await a.rollouts.require(r.id)).to.include({ state: 'cancelled', planning: false, finishedAt: clock });
    expect((await a.rollouts.counts(r.id)).cancelled).to.equal(2);
    expect(await a.rollouts.finishInterruptedPlanning(r.id)).to.equal(undefined);
    expect((await auditRows('rollout.finished'))[0]?.detail).to.include({ state: 'cancelled', cancelled: 2 });
  });

  it('summarize and sampleIds: counts by presence over more than one chunk; samples by id, named in their order', async () => {
    // 2100 devices (more than PLAN_CHUNK): every third online, every third never seen, the rest offline; every 7th without a user.
    await a.db.run(
      `INSERT INTO devices (id, user_id, state, origin, created_at, updated_at, last_seen_at, presence, report_interval_s)
       SELECT 'f' || lpad(i::text, 5, '0'), CASE WHEN i % 7 = 0 THEN NULL ELSE 'u1' END, 'provisioned', 'test', $1::bigint, $1::bigint,
              CASE WHEN i % 3 = 2 THEN NULL ELSE $1::bigint - 1000 END, CASE WHEN i % 3 = 0 THEN 'online' WHEN i % 3 = 1 THEN 'offline' END, 60
       FROM generate_series(0, 2099) AS i`,
      [T0],
    );
    await a.db.run("INSERT INTO device_keys (device_id, kid, use, jwk, status, added_at) SELECT id, id || '-enc', 'enc', '{}', 'current', $1 FROM devices", [
      T0,
    ]);
    await device('nokey', { encKey: false });
    const s = await a.rollouts.summarize({ all: true }, true, clock);
    expect(s).to.deep.equal({ targets: 2100, online: 700, offline: 700, unknown: 700, notSendable: 300 });
    expect(await a.rollouts.summarize({ all: true }, false, clock)).to.include({ notSendable: 0 });
    // Long after: the online ones are offline by now.
    expect(await a.rollouts.summarize({ all: true }, false, clock + 3_600_000)).to.include({ online: 0, offline: 1400 });
    const named = await a.rollouts.summarize({ devices: ['nokey', 'f00001'] }, false, clock);
    expect(named).to.deep.equal({ targets: 2, online: 0, offline: 1, unknown: 1, notSendable: 1 });
    expect(await a.rollouts.sampleIds({ all: true }, 3)).to.deep.equal(['f00000', 'f00001', 'f00002']);
    expect(await a.rollouts.sampleIds({ devices: ['f00009', 'f00001', 'nokey'] }, 2)).to.deep.equal(['f00009', 'f00001']);
    expect(await a.rollouts.sampleIds({ userId: 'nobody' }, 3)).to.deep.equal([]);
  });

  it('lease: take, renew (same generation), lapse and retake (new generation), release, holder; two machines racing for it: one wins', async () => {
    const b = await machine();
    const l1 = (await a.leases.take('L', 'A', 1000)) as Lease;
    expect(l1.generation).to.equal(1);
    clock += 500;
    expect(await a.leases.take('L', 'A', 1000)).to.deep.equal(l1);
    expect(await a.leases.renew(l1)).to.equal(true);
    clock += 999;
    expect(await a.leases.holder('L')).to.equal('A');
    clock += 1;
    expect(await a.leases.holder('L')).to.equal(undefined);
    expect(await a.leases.renew(l1)).to.equal(false);
    // Its own lease, lapsed: taken again with a new generation.
    expect((await a.leases.take('L', 'A', 1000))?.generation).to.equal(2);
    await b.leases.release('L', 'B');
    expect(await a.leases.holder('L')).to.equal('A');
    await a.leases.release('L', 'A');
    expect(await b.leases.holder('L')).to.equal(undefined);
    expect((await b.leases.take('L', 'B', 1000))?.generation).to.equal(3);
    clock += 10_000;
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? a : b).leases.take('L', `H${i}`, 5000)));
    const winners = results.filter((l) => l !== undefined);
    expect(winners).to.have.length(1);
    expect(winners[0]?.generation).to.equal(4);
    expect(await a.leases.holder('L')).to.equal(winners[0]?.holder);
    // A lease never taken before (no row yet): one of the racers inserts it, generation 1.
    const fresh = (await Promise.all(Array.from({ length: 6 }, (_, i) => (i % 2 === 0 ? a : b).leases.take('M', `H${i}`, 5000)))).filter(
      (l) => l !== undefined,
    );
    expect(fresh.map((l) => l.generation)).to.deep.equal([1]);
  });

  it('race: two machines claiming the same 500 targets at once under one lease: each target claimed once', async () => {
    const b = await machine();
    await a.db.run(
      `INSERT INTO devices (id, user_id, state, origin, created_at, updated_at) SELECT 'r' || lpad(i::text, 4, '0'), 'u1', 'provisioned', 'test', $1, $1
       FROM generate_series(0, 499) AS i`,
      [T0],
    );
    await a.db.run("INSERT INTO device_keys (device_id, kid, use, jwk, status, added_at) SELECT id, id || '-enc', 'enc', '{}', 'current', $1 FROM devices", [
      T0,
    ]);
    const r = await a.rollouts.createFromSelector(spec({ all: true }), { needsDeviceUser: true, chunk: 128 });
    expect((await a.rollouts.counts(r.id)).pending).to.equal(500);
    const lease = (await a.leases.take('rollouts', 'engine', 60_000)) as Lease;
    const ids = (await a.rollouts.targets(r.id)).map((t) => t.deviceId);
    const claimAll = async (m: Machine, order: string[]): Promise<number> => {
      let won = 0;
      // 8 claims in flight at a time per machine.
      for (let i = 0; i < order.length; i += 8)
        won += (await Promise.all(order.slice(i, i + 8).map((id) => m.rollouts.claim(r.id, id, lease)))).filter(Boolean).length;
      return won;
    };
    const [wonA, wonB] = await Promise.all([claimAll(a, ids), claimAll(b, [...ids].reverse())]);
    expect(wonA + wonB).to.equal(500);
    expect(wonA).to.be.greaterThan(0);
    expect(wonB).to.be.greaterThan(0);
    const counts = await a.rollouts.counts(r.id);
    expect(counts).to.include({ sending: 500, pending: 0 });
    const attempts = await a.db.q<{ attempts: number; n: number }>(
      'SELECT attempts, COUNT(*)::int AS n FROM rollout_targets WHERE rollout_id = $1 GROUP BY attempts',
      [r.id],
    );
    expect(attempts).to.deep.equal([{ attempts: 1, n: 500 }]);
  });

  it('race: a takeover while the old holder is claiming: every claim is before the take (then reclaimed) or refused, none left sending', async () => {
    // A's clock lags (it believes its lease live); B's is past A's expiry.
    const b = await machine(() => clock + 2000);
    await a.db.run(
      `INSERT INTO devices (id, user_id, state, origin, created_at, updated_at) SELECT 's' || lpad(i::text, 4, '0'), 'u1', 'provisioned', 'test', $1, $1
       FROM generate_series(0, 299) AS i`,
      [T0],
    );
    await a.db.run("INSERT INTO device_keys (device_id, kid, use, jwk, status, added_at) SELECT id, id || '-enc', 'enc', '{}', 'current', $1 FROM devices", [
      T0,
    ]);
    const r = await a.rollouts.createFromSelector(spec({ all: true }), { needsDeviceUser: true });
    const la = (await a.leases.take('rollouts', 'A', 1000)) as Lease;
    const ids = (await a.rollouts.targets(r.id)).map((t) => t.deviceId);
    let claimedByA = 0;
    const claiming = (async () => {
      for (let i = 0; i < ids.length; i += 6)
        claimedByA += (await Promise.all(ids.slice(i, i + 6).map((id) => a.rollouts.claim(r.id, id, la)))).filter(Boolean).length;
    })();
    await new Promise((resolve) => setTimeout(resolve, 30));
    const lb = (await b.leases.take('rollouts', 'B', 30_000)) as Lease;
    expect(lb.generation).to.equal(2);
    const reclaimed = await b.rollouts.reclaimSending(r.id, lb);
    await claiming;
    expect(claimedByA).to.be.greaterThan(0).and.lessThan(300);
    expect(reclaimed).to.deep.equal({ adopted: 0, requeued: claimedByA });
    expect(await a.rollouts.counts(r.id)).to.include({ pending: 300, sending: 0 });
  });

  it('a claim racing an uncommitted takeover or pause waits for it (row locks), then is refused', async () => {
    const b = await machine();
    for (const id of ['k1', 'k2']) await device(id);
    const r = await a.rollouts.create(spec({ all: true }), ['k1', 'k2']);
    const la = (await a.leases.take('rollouts', 'A', 30_000)) as Lease;
    /** Runs `statement` in a transaction on B left open until the returned commit() is called. */
    const openTx = async (statement: string): Promise<() => Promise<void>> => {
      let commit!: () => void;
      const gate = new Promise<void>((resolve) => (commit = resolve));
      let ran!: () => void;
      const done = new Promise<void>((resolve) => (ran = resolve));
      const tx = b.db.tx(async (sql) => {
        await sql.run(statement);
        ran();
        await gate;
      });
      await done;
      return async () => {
        commit();
        await tx;
      };
    };
    let commit = await openTx("UPDATE leases SET holder = 'B', generation = generation + 1 WHERE name = 'rollouts'");
    let settled = false;
    let claim = a.rollouts.claim(r.id, 'k1', la).finally(() => (settled = true));
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(settled, 'the claim waits for the takeover to commit').to.equal(false);
    await commit();
    expect(await claim).to.equal(false);
    const lb = { ...la, holder: 'B', generation: 2 };
    commit = await openTx(`UPDATE rollouts SET state = 'paused' WHERE id = '${r.id}'`);
    settled = false;
    claim = b.rollouts.claim(r.id, 'k2', lb).finally(() => (settled = true));
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(settled, 'the claim waits for the pause to commit').to.equal(false);
    await commit();
    expect(await claim).to.equal(false);
    expect(await a.rollouts.counts(r.id)).to.include({ pending: 2, sending: 0 });
  });

  it('race: two machines marking 200 claimed targets sent at once under one lease: all sent, no deadlock, the lease renewed', async () => {
    const b = await machine();
    await a.db.run(
      `INSERT INTO devices (id, user_id, state, origin, created_at, updated_at) SELECT 'm' || lpad(i::text, 4, '0'), 'u1', 'provisioned', 'test', $1, $1
       FROM generate_series(0, 199) AS i`,
      [T0],
    );
    await a.db.run("INSERT INTO device_keys (device_id, kid, use, jwk, status, added_at) SELECT id, id || '-enc', 'enc', '{}', 'current', $1 FROM devices", [
      T0,
    ]);
    const r = await a.rollouts.createFromSelector(spec({ all: true }), { needsDeviceUser: true });
    const lease = (await a.leases.take('rollouts', 'engine', 60_000)) as Lease;
    const ids = (await a.rollouts.targets(r.id)).map((t) => t.deviceId);
    for (const id of ids) expect(await a.rollouts.claim(r.id, id, lease)).to.equal(true);
    await a.db.run(
      `INSERT INTO commands (jti, device_id, action, user_id, params_digest, seq, encryption_kid, sealed, fanout_id, created_at, expires_at)
       SELECT 'j-' || id, id, 'update', 'u1', 'digest', 1, 'kid', 'sealed', $1, $2::bigint, $2::bigint + 600000 FROM devices`,
      [r.id, clock],
    );
    clock += 1000;
    const markAll = async (m: Machine, part: string[]): Promise<string[]> => {
      const out: string[] = [];
      for (let i = 0; i < part.length; i += 8)
        out.push(...(await Promise.all(part.slice(i, i + 8).map((id) => m.rollouts.markSent(r.id, id, `j-${id}`, lease)))));
      return out;
    };
    const [ra, rb] = await Promise.all([
      markAll(
        a,
        ids.filter((_, i) => i % 2 === 0),
      ),
      markAll(
        b,
        ids.filter((_, i) => i % 2 === 1),
      ),
    ]);
    expect([...ra, ...rb].filter((x) => x === 'sent')).to.have.length(200);
    expect(await a.rollouts.counts(r.id)).to.include({ sent: 200, sending: 0 });
    expect((await a.db.one<{ expires_at: number }>("SELECT expires_at FROM leases WHERE name = 'rollouts'"))?.expires_at).to.equal(clock + 60_000);
  });
});
