/** Shared storage suite: rollouts, their targets, the engine lease and fencing. Same tests on SQLite and PostgreSQL. */
import { expect } from 'chai';
import { emptyCounts, type Lease, type NewCommand, type RolloutRecord } from '../../server/storage/records.js';
import type { Storage } from '../../server/storage/types.js';
import { forEachBackend } from './backends.js';
import { ack, addDevice, Clock, keyPair, rejects, report, sendCommand, spec, type KeyPair } from './fixtures.js';

describe('storage: rollouts and leases', function () {
  let keys: KeyPair;
  before(async () => {
    keys = await keyPair();
  });
  /** Devices with one shared key pair (the storage does not care whose keys they are). */
  const fleet = async (s: Storage, ...ids: string[]): Promise<void> => {
    for (const id of ids) await addDevice(s, id, { keys });
  };
  const states = async (s: Storage, id: string): Promise<Record<string, string>> =>
    Object.fromEntries((await s.rollouts.targets(id)).map((t) => [t.deviceId, t.state]));
  /** A command sealed for a rollout target (fanout_id = the rollout id, as the engine records it). */
  const seal = (s: Storage, r: RolloutRecord, deviceId: string, fields: Partial<NewCommand> = {}): Promise<NewCommand> =>
    sendCommand(s, deviceId, { fanoutId: r.id, ...fields });

  forEachBackend((b) => {
    it('creates a rollout with its targets pending (record, counts, targets, list, audit); none matched: completed at once', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await fleet(s, 'd1', 'd2');
      const sp = spec({ devices: ['d2', 'd1'] }, { ratePerMin: 60, abortPercent: 5, userId: 'ops' });
      const r = await s.rollouts.create(sp, ['d2', 'd1']);
      expect(r).to.deep.equal({
        ...sp,
        id: r.id,
        createdAt: clock.t,
        planning: false,
        state: 'running',
        stateReason: null,
        updatedAt: clock.t,
        finishedAt: null,
        retryOf: null,
      });
      expect(await s.rollouts.require(r.id)).to.deep.equal(r);
      expect(await s.rollouts.get('nope')).to.equal(undefined);
      await rejects(s.rollouts.require('nope'), 'E_NO_ROLLOUT');
      expect(await s.rollouts.counts(r.id)).to.deep.equal({ ...emptyCounts(), pending: 2 });
      expect(await s.rollouts.targets(r.id)).to.deep.equal(
        ['d1', 'd2'].map((d) => ({
          rolloutId: r.id,
          deviceId: d,
          state: 'pending',
          jti: null,
          attempts: 0,
          code: null,
          sentAt: null,
          nextAt: null,
          updatedAt: clock.t,
        })),
      );
      expect((await s.rollouts.targets(r.id, { states: ['sent'] })).length).to.equal(0);
      expect((await s.rollouts.targets(r.id, { limit: 1 })).map((t) => t.deviceId)).to.deep.equal(['d1']);
      const ev = (await s.audit.query({ rolloutId: r.id })).map((e) => [e.event, e.detail]);
      expect(ev).to.deep.equal([
        [
          'rollout.create',
          {
            rollout_id: r.id,
            action: 'selftest',
            selector: { devices: ['d2', 'd1'] },
            devices: 2,
            deadline_at: new Date(sp.deadlineAt).toISOString(),
            rate_per_min: 60,
            abort_percent: 5,
          },
        ],
      ]);
      clock.advance(10);
      const empty = await s.rollouts.create(spec({ userId: 'nobody' }), []);
      expect([empty.state, empty.stateReason, empty.finishedAt]).to.deep.equal(['completed', 'no devices matched', clock.t]);
      expect((await s.audit.query({ rolloutId: empty.id })).map((e) => e.event)).to.deep.equal(['rollout.create', 'rollout.finished']);
      expect((await s.rollouts.list()).map((x) => x.id)).to.deep.equal([empty.id, r.id]);
      expect((await s.rollouts.list({ unfinished: true })).map((x) => x.id)).to.deep.equal([r.id]);
      expect((await s.rollouts.list({ limit: 1 })).map((x) => x.id)).to.deep.equal([empty.id]);
    });

    it('createFromSelector resolves every selector kind in chunks: all, user, tag, named devices, retry; not sendable ones are `not sent` with their code', async () => {
      const s = await b.open();
      await fleet(s, 'a', 'b', 'c', 'e', 'f');
      await addDevice(s, 'nouser', { userId: null, keys });
      await addDevice(s, 'dead', { state: 'decommissioned', keys });
      await s.devices.addTags('a', ['lab']);
      await s.devices.addTags('c', ['lab']);
      await s.devices.addTags('nouser', ['lab']);
      await s.devices.addTags('dead', ['lab']);
      await s.devices.addTags('b', ['roof']);
      const all = await s.rollouts.createFromSelector(spec({ all: true }), { needsDeviceUser: true, chunk: 2 });
      expect(all.planning).to.equal(false);
      expect(await states(s, all.id)).to.deep.equal({ a: 'pending', b: 'pending', c: 'pending', e: 'pending', f: 'pending', nouser: 'not sent' });
      expect((await s.rollouts.targets(all.id, { states: ['not sent'] }))[0]?.code).to.equal('E_USAGE');
      const user = await s.rollouts.createFromSelector(spec({ userId: 'alice' }), { needsDeviceUser: false, chunk: 2 });
      expect(Object.keys(await states(s, user.id))).to.deep.equal(['a', 'b', 'c', 'e', 'f']);
      const tag = await s.rollouts.createFromSelector(spec({ tag: 'lab' }), { needsDeviceUser: false });
      expect(await states(s, tag.id)).to.deep.equal({ a: 'pending', c: 'pending', nouser: 'pending' });
      const named = await s.rollouts.createFromSelector(spec({ devices: ['dead', 'c'] }), { needsDeviceUser: true });
      expect(await states(s, named.id)).to.deep.equal({ c: 'pending', dead: 'not sent' });
      expect((await s.rollouts.targets(named.id, { states: ['not sent'] }))[0]?.code).to.equal('E_DECOMMISSIONED');
      const before = (await s.rollouts.list()).length;
      const err = await rejects(s.rollouts.createFromSelector(spec({ devices: ['a', 'x1', 'x2'] }), { needsDeviceUser: true }), 'E_NO_DEVICE');
      expect(err.message).to.contain('x1').and.to.contain('x2');
      await rejects(s.rollouts.createFromSelector(spec({ tag: 'not a tag' }), { needsDeviceUser: true }), 'E_BAD_TAG');
      expect((await s.rollouts.list()).length).to.equal(before);
      // A retry of the targets of `all` not sent or pending, without the need for a device user.
      const retry = await s.rollouts.createFromSelector(spec({ retryOf: all.id, states: ['not sent'] }), {
        needsDeviceUser: false,
        retryOf: { id: all.id, inFlightLeftOut: 3, removedLeftOut: 1 },
      });
      expect([retry.retryOf, retry.state]).to.deep.equal([all.id, 'running']);
      expect(await states(s, retry.id)).to.deep.equal({ nouser: 'pending' });
      const retried = (await s.audit.query({ rolloutId: retry.id, event: 'rollout.retry' })).map((e) => e.detail);
      expect(retried).to.deep.equal([{ rollout_id: retry.id, retry_of: all.id, devices: 1, in_flight_left_out: 3, removed_left_out: 1 }]);
      // Nothing sendable: completed at once.
      const none = await s.rollouts.createFromSelector(spec({ devices: ['dead'] }), { needsDeviceUser: false });
      expect([none.state, none.stateReason, none.finishedAt !== null]).to.deep.equal(['completed', 'no target could be sent to', true]);
      const nobody = await s.rollouts.createFromSelector(spec({ userId: 'nobody' }), { needsDeviceUser: false });
      expect([nobody.state, nobody.stateReason]).to.deep.equal(['completed', 'no devices matched']);
    });

    it('createFromSelector with maxTargets: more matched than confirmed cancels the rollout before release, nothing pending (E_CONFIRM)', async () => {
      const s = await b.open();
      await fleet(s, 'a', 'b', 'c');
      await rejects(s.rollouts.createFromSelector(spec({ all: true }, { action: 'delete' }), { needsDeviceUser: false, chunk: 1, maxTargets: 2 }), 'E_CONFIRM');
      const [r] = await s.rollouts.list();
      expect(r).to.not.equal(undefined);
      expect([r?.state, r?.planning, r?.finishedAt !== null]).to.deep.equal(['cancelled', false, true]);
      const targets = await s.rollouts.targets(r?.id ?? '');
      expect(targets.length).to.be.within(1, 3);
      expect(targets.every((t) => t.state === 'cancelled' && t.code === 'E_CONFIRM')).to.equal(true);
      const ok = await s.rollouts.createFromSelector(spec({ all: true }), { needsDeviceUser: false, chunk: 1, maxTargets: 3 });
      expect((await s.rollouts.counts(ok.id)).pending).to.equal(3);
    });

    it('the lease: one live holder; renewing keeps the generation, a new holder (or a lapsed one) gets a higher one; release lets it lapse', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      expect(await s.leases.holder('engine')).to.equal(undefined);
      const a = await s.leases.take('engine', 'A', 1000);
      expect(a).to.deep.equal({ name: 'engine', holder: 'A', generation: 1, ttlMs: 1000 });
      expect(await s.leases.take('engine', 'B', 1000)).to.equal(undefined);
      expect(await s.leases.holder('engine')).to.equal('A');
      clock.advance(600);
      expect(await s.leases.take('engine', 'A', 1000)).to.deep.equal(a);
      clock.advance(600);
      expect(await s.leases.renew(a as Lease)).to.equal(true);
      clock.advance(900);
      expect(await s.leases.holder('engine')).to.equal('A');
      expect(await s.leases.take('engine', 'B', 1000)).to.equal(undefined);
      clock.advance(101);
      expect(await s.leases.holder('engine')).to.equal(undefined);
      expect(await s.leases.renew(a as Lease)).to.equal(false);
      const bLease = await s.leases.take('engine', 'B', 1000);
      expect(bLease?.generation).to.equal(2);
      expect(await s.leases.renew(a as Lease)).to.equal(false);
      expect(await s.leases.take('engine', 'A', 1000)).to.equal(undefined);
      await s.leases.release('engine', 'A');
      expect(await s.leases.holder('engine')).to.equal('B');
      await s.leases.release('engine', 'B');
      expect(await s.leases.holder('engine')).to.equal(undefined);
      expect((await s.leases.take('engine', 'B', 1000))?.generation).to.equal(3);
      // Another name is another lease.
      expect((await s.leases.take('other', 'A', 1000))?.generation).to.equal(1);
    });

    it('claims a pending target once, only under the live lease and while the rollout runs (deliverable, move)', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await fleet(s, 'd1', 'd2', 'd3');
      const r = await s.rollouts.create(spec({ devices: ['d1', 'd2', 'd3'] }), ['d1', 'd2', 'd3']);
      const lease = (await s.leases.take('rollouts', 'A', 10_000)) as Lease;
      expect((await s.rollouts.deliverable(r.id, clock.t, 2)).map((t) => t.deviceId)).to.deep.equal(['d1', 'd2']);
      expect(await s.rollouts.deliverable(r.id, clock.t, 0)).to.deep.equal([]);
      expect(await s.rollouts.claim(r.id, 'd1', lease)).to.equal(true);
      expect(await s.rollouts.claim(r.id, 'd1', lease)).to.equal(false);
      expect(await s.rollouts.claim(r.id, 'd2', { ...lease, generation: lease.generation + 1 })).to.equal(false);
      expect(await s.rollouts.claim(r.id, 'd2', { ...lease, holder: 'B' })).to.equal(false);
      expect(await s.rollouts.claim('nope', 'd2', lease)).to.equal(false);
      const t1 = (await s.rollouts.targets(r.id)).find((t) => t.deviceId === 'd1');
      expect([t1?.state, t1?.attempts]).to.deep.equal(['sending', 1]);
      expect((await s.rollouts.deliverable(r.id, clock.t, 10)).map((t) => t.deviceId)).to.deep.equal(['d2', 'd3']);
      await s.rollouts.setState(r.id, ['running'], 'paused', 'operator', 'cli');
      expect(await s.rollouts.claim(r.id, 'd2', lease)).to.equal(false);
      await s.rollouts.setState(r.id, ['paused'], 'running', 'operator', 'cli');
      // A re-send backoff holds a target back until next_at; claiming clears it.
      expect(await s.rollouts.move(r.id, 'd3', ['pending'], 'pending', { nextAt: clock.t + 5000, code: 'E_EXPIRED' })).to.equal(true);
      expect(await s.rollouts.move(r.id, 'd3', ['sent'], 'pending')).to.equal(false);
      expect((await s.rollouts.deliverable(r.id, clock.t, 10)).map((t) => t.deviceId)).to.deep.equal(['d2']);
      expect(await s.rollouts.pendingBreakdown(r.id, clock.t)).to.deep.equal({ deliverable: 1, backoff: 1, offline: 0, backoffUntil: clock.t + 5000 });
      clock.advance(5000);
      expect((await s.rollouts.deliverable(r.id, clock.t, 10)).map((t) => t.deviceId)).to.deep.equal(['d2', 'd3']);
      expect(await s.rollouts.claim(r.id, 'd3', lease)).to.equal(true);
      const t3 = (await s.rollouts.targets(r.id)).find((t) => t.deviceId === 'd3');
      expect([t3?.state, t3?.nextAt, t3?.code]).to.deep.equal(['sending', null, 'E_EXPIRED']);
      // Requeued after an attempt: behind the targets never tried.
      expect(await s.rollouts.move(r.id, 'd1', ['sending'], 'pending')).to.equal(true);
      expect((await s.rollouts.deliverable(r.id, clock.t, 10)).map((t) => [t.deviceId, t.attempts])).to.deep.equal([
        ['d2', 0],
        ['d1', 1],
      ]);
      // move under a lease that is no longer held changes nothing.
      clock.advance(10_001);
      expect(await s.rollouts.move(r.id, 'd2', ['pending'], 'cancelled', { lease })).to.equal(false);
      expect(await s.rollouts.claim(r.id, 'd2', lease)).to.equal(false);
    });

    it('fencing: once another engine took the lease, the old one marks nothing sent (its command voided); the new one adopts or requeues what it left `sending`', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await fleet(s, 'd1', 'd2', 'd3');
      const r = await s.rollouts.create(spec({ devices: ['d1', 'd2', 'd3'] }), ['d1', 'd2', 'd3']);
      const a = (await s.leases.take('rollouts', 'A', 1000)) as Lease;
      for (const d of ['d1', 'd2', 'd3']) expect(await s.rollouts.claim(r.id, d, a)).to.equal(true);
      const c1 = await seal(s, r, 'd1');
      clock.advance(10);
      expect(await s.rollouts.markSent(r.id, 'd1', c1.jti, a)).to.equal('sent');
      const t1 = (await s.rollouts.targets(r.id)).find((t) => t.deviceId === 'd1');
      expect([t1?.state, t1?.jti, t1?.sentAt]).to.deep.equal(['sent', c1.jti, clock.t]);
      expect(await s.rollouts.lastSentAt(r.id)).to.equal(clock.t);
      // Marking sent renewed the lease (proof of life): held past its first expiry.
      clock.advance(995);
      expect(await s.leases.holder('rollouts')).to.equal('A');
      clock.advance(-995);
      // A seals for d3 twice (the older one never published) and for d2, then stalls past its lease.
      const c3old = await seal(s, r, 'd3');
      clock.advance(10);
      const c3 = await seal(s, r, 'd3');
      const c2 = await seal(s, r, 'd2');
      clock.advance(2000);
      const bl = (await s.leases.take('rollouts', 'B', 1000)) as Lease;
      expect(bl.generation).to.equal(a.generation + 1);
      expect(await s.rollouts.markSent(r.id, 'd2', c2.jti, a)).to.equal('fenced');
      expect((await s.commands.get(c2.jti))?.voidedAt).to.equal(clock.t);
      expect(await states(s, r.id)).to.deep.equal({ d1: 'sent', d2: 'sending', d3: 'sending' });
      expect(await s.rollouts.reclaimSending(r.id, a)).to.deep.equal({ adopted: 0, requeued: 0 });
      expect(await s.rollouts.reclaimSending(r.id, bl)).to.deep.equal({ adopted: 1, requeued: 1 });
      expect(await states(s, r.id)).to.deep.equal({ d1: 'sent', d2: 'pending', d3: 'sent' });
      const t3 = (await s.rollouts.targets(r.id)).find((t) => t.deviceId === 'd3');
      expect([t3?.jti, t3?.sentAt]).to.deep.equal([c3.jti, clock.t]);
      expect((await s.commands.get(c3old.jti))?.voidedAt).to.equal(clock.t);
      expect((await s.commands.get(c3.jti))?.voidedAt).to.equal(null);
      // The stalled engine resumes: nothing it does lands.
      expect(await s.rollouts.markSent(r.id, 'd3', c3.jti, a)).to.equal('fenced');
      expect((await s.commands.get(c3.jti))?.voidedAt).to.equal(null);
      expect(await s.rollouts.claim(r.id, 'd2', a)).to.equal(false);
      expect(await s.rollouts.claim(r.id, 'd2', bl)).to.equal(true);
    });

    it('reclaimSending requeues a target whose recorded command expired; a stopped rollout cancels or requeues what was `sending`', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await fleet(s, 'd1', 'd2');
      const r = await s.rollouts.create(spec({ devices: ['d1'] }), ['d1']);
      const a = (await s.leases.take('rollouts', 'A', 1000)) as Lease;
      await s.rollouts.claim(r.id, 'd1', a);
      const c = await seal(s, r, 'd1', { expiresAt: clock.t + 500 });
      clock.advance(1001);
      const bl = (await s.leases.take('rollouts', 'B', 100_000)) as Lease;
      expect(await s.rollouts.reclaimSending(r.id, bl)).to.deep.equal({ adopted: 0, requeued: 1 });
      expect(await states(s, r.id)).to.deep.equal({ d1: 'pending' });
      expect((await s.commands.get(c.jti))?.voidedAt).to.equal(clock.t);

      const r2 = await s.rollouts.create(spec({ devices: ['d2'] }), ['d2']);
      await s.rollouts.claim(r2.id, 'd2', bl);
      const c2 = await seal(s, r2, 'd2');
      await s.rollouts.setState(r2.id, ['running'], 'cancelled', 'stop', 'api');
      expect(await s.rollouts.reclaimSending(r2.id, bl)).to.deep.equal({ adopted: 0, requeued: 1 });
      const t = (await s.rollouts.targets(r2.id))[0];
      expect([t?.state, t?.code]).to.deep.equal(['cancelled', 'E_CANCELLED']);
      expect((await s.commands.get(c2.jti))?.voidedAt).to.equal(clock.t);
    });

    it('markSent in a rollout paused or cancelled meanwhile: `stopped`, the target waits again or is cancelled, the command voided', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await fleet(s, 'd1', 'd2');
      const r = await s.rollouts.create(spec({ devices: ['d1', 'd2'] }), ['d1', 'd2']);
      const lease = (await s.leases.take('rollouts', 'A', 60_000)) as Lease;
      await s.rollouts.claim(r.id, 'd1', lease);
      await s.rollouts.claim(r.id, 'd2', lease);
      const c1 = await seal(s, r, 'd1');
      const c2 = await seal(s, r, 'd2');
      await s.rollouts.setState(r.id, ['running'], 'paused', 'hold on', 'cli');
      clock.advance(5);
      expect(await s.rollouts.markSent(r.id, 'd1', c1.jti, lease)).to.equal('stopped');
      expect(await states(s, r.id)).to.deep.equal({ d1: 'pending', d2: 'sending' });
      expect((await s.commands.get(c1.jti))?.voidedAt).to.equal(clock.t);
      await s.rollouts.setState(r.id, ['running', 'paused'], 'cancelled', 'no', 'cli');
      expect(await s.rollouts.markSent(r.id, 'd2', c2.jti, lease)).to.equal('stopped');
      const ts = await s.rollouts.targets(r.id);
      expect(ts.map((t) => [t.deviceId, t.state, t.code])).to.deep.equal([
        ['d1', 'cancelled', 'E_CANCELLED'],
        ['d2', 'cancelled', 'E_CANCELLED'],
      ]);
      expect((await s.commands.get(c2.jti))?.voidedAt).to.equal(clock.t);
      expect(await s.rollouts.lastSentAt(r.id)).to.equal(null);
    });

    it('setState moves only from the states named (E_ROLLOUT_STATE), audits who did it; finish keeps a cancelled rollout cancelled', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await fleet(s, 'd1', 'd2');
      const r = await s.rollouts.create(spec({ devices: ['d1', 'd2'] }), ['d1', 'd2']);
      clock.advance(10);
      const paused = await s.rollouts.setState(r.id, ['running'], 'paused', 'looks odd', 'alice');
      expect([paused.state, paused.stateReason, paused.updatedAt]).to.deep.equal(['paused', 'looks odd', clock.t]);
      await rejects(s.rollouts.setState(r.id, ['running'], 'paused', 'again', 'alice'), 'E_ROLLOUT_STATE');
      await rejects(s.rollouts.setState('nope', ['running'], 'paused', 'x', 'alice'), 'E_NO_ROLLOUT');
      await s.rollouts.setState(r.id, ['paused'], 'running', 'fine', 'bob');
      await s.rollouts.move(r.id, 'd2', ['pending'], 'applied');
      await s.rollouts.setState(r.id, ['running', 'paused'], 'aborted', 'too many failures', 'engine');
      expect(await states(s, r.id)).to.deep.equal({ d1: 'cancelled', d2: 'applied' });
      expect((await s.rollouts.targets(r.id, { states: ['cancelled'] }))[0]?.code).to.equal('E_ABORTED');
      clock.advance(10);
      await s.rollouts.finish(r.id, 'completed', 'all done');
      const done = await s.rollouts.require(r.id);
      expect([done.state, done.stateReason, done.finishedAt]).to.deep.equal(['aborted', 'too many failures', clock.t]);
      clock.advance(10);
      await s.rollouts.finish(r.id, 'completed', 'again');
      expect((await s.rollouts.require(r.id)).finishedAt).to.equal(clock.t - 10);
      const ev = (await s.audit.query({ rolloutId: r.id, event: 'rollout' })).map((e) => [e.event, e.detail]);
      expect(ev.slice(1, 5)).to.deep.equal([
        ['rollout.pause', { rollout_id: r.id, reason: 'looks odd', by: 'alice' }],
        ['rollout.resume', { rollout_id: r.id, reason: 'fine', by: 'bob' }],
        ['rollout.abort', { rollout_id: r.id, reason: 'too many failures', by: 'engine' }],
        ['rollout.finished', { rollout_id: r.id, state: 'aborted', reason: 'all done', ...emptyCounts(), cancelled: 1, applied: 1 }],
      ]);
      // A running rollout finished: completed.
      const r2 = await s.rollouts.create(spec({ devices: ['d1'] }), ['d1']);
      await s.rollouts.finish(r2.id, 'completed', 'deadline');
      expect(await s.rollouts.require(r2.id)).to.deep.include({ state: 'completed', stateReason: 'deadline' });
    });

    it('what the engine reads of targets in flight: unansweredValid, answered, inFlight, unansweredExpired, pendingFor, expireAll, cancelPending', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await fleet(s, 'd1', 'd2', 'd3', 'd4', 'd5');
      const ids = ['d1', 'd2', 'd3', 'd4', 'd5'];
      const r = await s.rollouts.create(spec({ devices: ids }), ids);
      const lease = (await s.leases.take('rollouts', 'A', 60_000)) as Lease;
      const c: Record<string, NewCommand> = {};
      for (const d of ['d1', 'd2', 'd4']) {
        await s.rollouts.claim(r.id, d, lease);
        c[d] = await seal(s, r, d, { expiresAt: clock.t + (d === 'd4' ? 1000 : 60_000) });
        expect(await s.rollouts.markSent(r.id, d, (c[d] as NewCommand).jti, lease)).to.equal('sent');
      }
      await s.commands.recordAck('d2', ack(c.d2 as NewCommand, { status: 'failed', code: 'E_SENSOR' }), []);
      clock.advance(1000);
      expect(await s.rollouts.unansweredValid(r.id, clock.t)).to.deep.equal([{ deviceId: 'd1', jti: c.d1?.jti }]);
      expect(await s.rollouts.answered(r.id)).to.deep.equal([{ deviceId: 'd2', jti: c.d2?.jti, status: 'failed', code: 'E_SENSOR', attempts: 1 }]);
      expect(await s.rollouts.inFlight(r.id, clock.t)).to.equal(2);
      await s.rollouts.claim(r.id, 'd3', lease);
      expect(await s.rollouts.inFlight(r.id, clock.t)).to.equal(3);
      expect(await s.rollouts.unansweredExpired('d4', clock.t)).to.deep.equal([{ rolloutId: r.id, jti: c.d4?.jti }]);
      expect(await s.rollouts.unansweredExpired('d1', clock.t)).to.deep.equal([]);
      expect(await s.rollouts.pendingFor('d5')).to.deep.equal([r.id]);
      expect(await s.rollouts.pendingFor('d1')).to.deep.equal([]);
      await s.rollouts.setState(r.id, ['running'], 'paused', 'p', 'x');
      expect(await s.rollouts.unansweredExpired('d4', clock.t)).to.deep.equal([]);
      expect(await s.rollouts.pendingFor('d5')).to.deep.equal([]);
      expect(await s.rollouts.cancelPending(r.id, 'E_TEST')).to.equal(1);
      expect(await s.rollouts.expireAll(r.id)).to.equal(4);
      const ts = await s.rollouts.targets(r.id);
      expect(ts.map((t) => [t.deviceId, t.state, t.code])).to.deep.equal([
        ['d1', 'expired', 'E_DEADLINE'],
        ['d2', 'expired', 'E_DEADLINE'],
        ['d3', 'expired', 'E_DEADLINE'],
        ['d4', 'expired', 'E_DEADLINE'],
        ['d5', 'cancelled', 'E_TEST'],
      ]);
    });

    it('summarize counts what a selector matches by presence and sendability; sampleIds gives the first ids (named ones in their order)', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await fleet(s, 'on', 'off-late', 'off-will', 'unknown');
      await addDevice(s, 'nouser', { userId: null, keys });
      await addDevice(s, 'dead', { state: 'decommissioned', keys });
      await s.devices.recordReport('off-late', report('off-late', { interval_s: 60 }));
      clock.advance(150_001);
      await s.devices.recordReport('on', report('on', { interval_s: 60 }));
      await s.devices.recordReport('off-will', report('off-will', { interval_s: 60 }));
      await s.devices.recordReport('off-will', report('off-will', { reason: 'offline', n: 0 }));
      expect(await s.rollouts.summarize({ all: true }, true, clock.t)).to.deep.equal({ targets: 5, online: 1, offline: 2, unknown: 2, notSendable: 1 });
      expect(await s.rollouts.summarize({ all: true }, false, clock.t)).to.deep.equal({ targets: 5, online: 1, offline: 2, unknown: 2, notSendable: 0 });
      expect(await s.rollouts.summarize({ devices: ['dead', 'on'] }, false, clock.t)).to.deep.equal({
        targets: 2,
        online: 1,
        offline: 0,
        unknown: 1,
        notSendable: 1,
      });
      await rejects(s.rollouts.summarize({ devices: ['on', 'ghost'] }, false, clock.t), 'E_NO_DEVICE');
      expect(await s.rollouts.sampleIds({ all: true }, 3)).to.deep.equal(['nouser', 'off-late', 'off-will']);
      expect(await s.rollouts.sampleIds({ devices: ['unknown', 'dead', 'on'] }, 2)).to.deep.equal(['unknown', 'dead']);
      expect(await s.rollouts.sampleIds({ userId: 'alice' }, 10)).to.deep.equal(['off-late', 'off-will', 'on', 'unknown']);
      // Presence as of another instant: off-late was online then.
      expect((await s.rollouts.summarize({ devices: ['off-late'] }, false, clock.t - 150_001)).online).to.equal(1);
    });

    it('removedTargets counts targets whose device was removed since; lastSentAt is the latest send', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await fleet(s, 'd1', 'd2', 'd3');
      const r = await s.rollouts.create(spec({ devices: ['d1', 'd2', 'd3'] }), ['d1', 'd2', 'd3']);
      expect(await s.rollouts.lastSentAt(r.id)).to.equal(null);
      await s.rollouts.move(r.id, 'd1', ['pending'], 'sent', { jti: 'j1', sent: true, attempt: true });
      clock.advance(50);
      await s.rollouts.move(r.id, 'd2', ['pending'], 'sent', { jti: 'j2', sent: true });
      clock.advance(50);
      await s.rollouts.move(r.id, 'd3', ['pending'], 'failed', { code: 'E_X' });
      expect(await s.rollouts.lastSentAt(r.id)).to.equal(clock.t - 50);
      await s.devices.remove('d2');
      await s.devices.remove('d3');
      expect(await s.rollouts.removedTargets(r.id, ['sent'])).to.equal(1);
      expect(await s.rollouts.removedTargets(r.id, ['sent', 'failed'])).to.equal(2);
      expect(await s.rollouts.removedTargets(r.id, ['pending'])).to.equal(0);
      const t1 = (await s.rollouts.targets(r.id))[0];
      expect([t1?.jti, t1?.attempts, t1?.sentAt]).to.deep.equal(['j1', 1, clock.t - 100]);
    });

    it('finishInterruptedPlanning finishes a rollout left planning with a stale heartbeat, not a live one', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await fleet(s, 'd1');
      const r = await s.rollouts.create(spec({ devices: ['d1'] }), ['d1']);
      expect(await s.rollouts.finishInterruptedPlanning(r.id)).to.equal(undefined);
      await b.sql(s, 'UPDATE rollouts SET planning = 1 WHERE id = $1', [r.id]);
      clock.advance(60_000);
      expect(await s.rollouts.finishInterruptedPlanning(r.id)).to.equal(undefined);
      clock.advance(1);
      const reason = await s.rollouts.finishInterruptedPlanning(r.id);
      expect(reason).to.equal('planning interrupted: 1 target(s) recorded, nothing sent');
      expect(await s.rollouts.require(r.id)).to.deep.include({ planning: false, state: 'cancelled', stateReason: reason, finishedAt: clock.t });
      expect(await states(s, r.id)).to.deep.equal({ d1: 'cancelled' });
      expect(await s.rollouts.finishInterruptedPlanning(r.id)).to.equal(undefined);
    });
  });
});
