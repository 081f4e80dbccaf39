/** Shared storage suite: the console's read models (DeviceStore.page, presenceHistory, bulkTags). Same tests on SQLite and PostgreSQL. */
import { expect } from 'chai';
import type { Storage } from '../../server/storage/types.js';
import { forEachBackend } from './backends.js';
import { ack, addDevice, Clock, rejects, report, sendCommand } from './fixtures.js';

describe('storage: fleet page, presence history, bulk tags', function () {
  forEachBackend((b) => {
    /**
     * a-online (alice, v1.0.0, tag lab), B-Offline (bob, v2.0.0, reported offline), c-lapsed (carol, v1.0.0, its last
     * report older than the grace), d-never (no user, never reported), e-flagged (alice, never reported, flagged).
     */
    async function fleet(clock: Clock): Promise<Storage> {
      const s = await b.open({ now: clock.now });
      await addDevice(s, 'a-online', { userId: 'alice' });
      await addDevice(s, 'B-Offline', { userId: 'bob' });
      await addDevice(s, 'c-lapsed', { userId: 'carol' });
      await addDevice(s, 'd-never', { userId: null });
      await addDevice(s, 'e-flagged', { userId: 'alice' });
      await s.devices.addTags('a-online', ['lab']);
      await s.devices.addTags('e-flagged', ['lab', 'x']);
      await s.devices.recordReport('c-lapsed', report('c-lapsed', { interval_s: 10 }));
      clock.advance(60_000);
      await s.devices.recordReport('a-online', report('a-online'));
      await s.devices.recordReport('B-Offline', report('B-Offline', { agent_version: '2.0.0' }));
      clock.advance(1000);
      await s.devices.recordReport('B-Offline', report('B-Offline', { reason: 'offline', n: 0, agent_version: '2.0.0' }));
      const c = await sendCommand(s, 'e-flagged');
      await s.commands.recordAck('e-flagged', ack(c, { status: 'rejected', code: 'E_X' }), []);
      await s.commands.recordAck('e-flagged', ack(c), []);
      return s;
    }
    const ids = async (s: Storage, q: Omit<Parameters<Storage['devices']['page']>[0], 'now'>, now: number): Promise<string[]> =>
      (await s.devices.page({ ...q, now })).items.map((i) => i.device.id);

    it('filters in the database: q (id or user, any case), tag, user, online, version (none: unknown), flagged; total counts every match', async () => {
      const clock = new Clock();
      const s = await fleet(clock);
      const now = clock.t;
      expect(await ids(s, {}, now)).to.deep.equal(['B-Offline', 'a-online', 'c-lapsed', 'd-never', 'e-flagged']);
      expect(await ids(s, { q: 'OFF' }, now)).to.deep.equal(['B-Offline']);
      expect(await ids(s, { q: 'ALIC' }, now)).to.deep.equal(['a-online', 'e-flagged']);
      // % and _ are text, not patterns.
      expect(await ids(s, { q: '%' }, now)).to.deep.equal([]);
      expect(await ids(s, { q: '_' }, now)).to.deep.equal([]);
      expect(await ids(s, { tag: 'lab' }, now)).to.deep.equal(['a-online', 'e-flagged']);
      expect(await ids(s, { tag: 'none-has-it' }, now)).to.deep.equal([]);
      await rejects(s.devices.page({ tag: 'bad tag', now }), 'E_BAD_TAG');
      expect(await ids(s, { userId: 'alice' }, now)).to.deep.equal(['a-online', 'e-flagged']);
      expect(await ids(s, { online: true }, now)).to.deep.equal(['a-online']);
      expect(await ids(s, { online: false }, now)).to.deep.equal(['B-Offline', 'c-lapsed', 'd-never', 'e-flagged']);
      // Online is judged by the clock given: 150 s later (2.5 x 60 s) a-online has lapsed too.
      expect(await ids(s, { online: true }, now + 150_001)).to.deep.equal([]);
      expect(await ids(s, { version: '1.0.0' }, now)).to.deep.equal(['a-online', 'c-lapsed']);
      expect(await ids(s, { version: '2.0.0' }, now)).to.deep.equal(['B-Offline']);
      expect(await ids(s, { version: null }, now)).to.deep.equal(['d-never', 'e-flagged']);
      expect(await ids(s, { flagged: true }, now)).to.deep.equal(['e-flagged']);
      expect(await ids(s, { flagged: false }, now)).to.have.length(4);
      const combined = await s.devices.page({ tag: 'lab', online: false, q: 'e-', now });
      expect([combined.total, combined.items.map((i) => i.device.id)]).to.deep.equal([1, ['e-flagged']]);
      const paged = await s.devices.page({ limit: 2, offset: 1, now });
      expect([paged.total, paged.items.map((i) => i.device.id)]).to.deep.equal([5, ['a-online', 'c-lapsed']]);
      const past = await s.devices.page({ limit: 2, offset: 10, now });
      expect([past.total, past.items]).to.deep.equal([5, []]);
      expect(await ids(s, { offset: 3 }, now)).to.deep.equal(['d-never', 'e-flagged']);
    });

    it('sorts by id, user, last seen, version and status both ways, nulls last, ties by id; records as get() reads them', async () => {
      const clock = new Clock();
      const s = await fleet(clock);
      const now = clock.t;
      expect(await ids(s, { dir: 'desc' }, now)).to.deep.equal(['e-flagged', 'd-never', 'c-lapsed', 'a-online', 'B-Offline']);
      expect(await ids(s, { sort: 'user' }, now)).to.deep.equal(['a-online', 'e-flagged', 'B-Offline', 'c-lapsed', 'd-never']);
      expect(await ids(s, { sort: 'user', dir: 'desc' }, now)).to.deep.equal(['c-lapsed', 'B-Offline', 'e-flagged', 'a-online', 'd-never']);
      expect(await ids(s, { sort: 'last_seen' }, now)).to.deep.equal(['c-lapsed', 'B-Offline', 'a-online', 'd-never', 'e-flagged']);
      expect(await ids(s, { sort: 'last_seen', dir: 'desc' }, now)).to.deep.equal(['a-online', 'B-Offline', 'c-lapsed', 'e-flagged', 'd-never']);
      expect(await ids(s, { sort: 'version' }, now)).to.deep.equal(['a-online', 'c-lapsed', 'B-Offline', 'd-never', 'e-flagged']);
      expect(await ids(s, { sort: 'version', dir: 'desc' }, now)).to.deep.equal(['B-Offline', 'c-lapsed', 'a-online', 'e-flagged', 'd-never']);
      expect(await ids(s, { sort: 'status' }, now)).to.deep.equal(['a-online', 'B-Offline', 'c-lapsed', 'd-never', 'e-flagged']);
      expect(await ids(s, { sort: 'status', dir: 'desc' }, now)).to.deep.equal(['e-flagged', 'd-never', 'c-lapsed', 'B-Offline', 'a-online']);
      const page = await s.devices.page({ now });
      for (const i of page.items) expect(i.device).to.deep.equal(await s.devices.require(i.device.id));
    });

    it('each device comes with its newest command (by creation), null when none', async () => {
      const clock = new Clock();
      const s = await fleet(clock);
      clock.advance(1000);
      const first = await sendCommand(s, 'a-online', { action: 'update' });
      clock.advance(1000);
      const second = await sendCommand(s, 'a-online', { action: 'selftest' });
      await s.commands.recordAck('a-online', ack(second, { status: 'failed', code: 'E_SELFTEST' }), []);
      const page = await s.devices.page({ now: clock.t });
      const last = Object.fromEntries(page.items.map((i) => [i.device.id, i.lastCommand]));
      expect(last['a-online']).to.deep.include({ jti: second.jti, action: 'selftest', ackStatus: 'failed', ackCode: 'E_SELFTEST' });
      expect(last['a-online']?.jti).to.not.equal(first.jti);
      expect(last['e-flagged']?.ackStatus).to.equal('rejected');
      expect(last['d-never']).to.equal(null);
    });

    it('records presence changes from reports: online, offline (will), timeout when the grace lapsed; newest first', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await addDevice(s, 'p1');
      expect(await s.devices.presenceHistory('p1')).to.deep.equal([]);
      const t0 = clock.t;
      await s.devices.recordReport('p1', report('p1', { interval_s: 10 }));
      clock.advance(5000);
      // Still online: an interval report changes nothing.
      await s.devices.recordReport('p1', report('p1', { reason: 'interval', n: 2, interval_s: 10 }));
      clock.advance(1000);
      const t1 = clock.t;
      await s.devices.recordReport('p1', report('p1', { reason: 'offline', n: 0, interval_s: 10 }));
      // A replayed will changes nothing.
      await s.devices.recordReport('p1', report('p1', { reason: 'offline', n: 0, interval_s: 10 }));
      clock.advance(1000);
      const t2 = clock.t;
      await s.devices.recordReport('p1', report('p1', { conn: 2, interval_s: 10 }));
      // No report for 60 s (> 2.5 x 10 s): the next one records the timeout at the lapse, then online again.
      clock.advance(60_000);
      const t3 = clock.t;
      await s.devices.recordReport('p1', report('p1', { conn: 2, n: 2, reason: 'interval', interval_s: 10 }));
      const h = await s.devices.presenceHistory('p1');
      expect(h.map((c) => [c.at, c.presence, c.reason, c.session, c.conn])).to.deep.equal([
        [t3, 'online', 'interval', 'sess-1', 2],
        [t2 + 25_000, 'offline', 'timeout', 'sess-1', 2],
        [t2, 'online', 'connect', 'sess-1', 2],
        [t1, 'offline', 'offline', 'sess-1', 1],
        [t0, 'online', 'connect', 'sess-1', 1],
      ]);
      expect((await s.devices.presenceHistory('p1', 2)).map((c) => c.reason)).to.deep.equal(['interval', 'timeout']);
      await rejects(s.devices.presenceHistory('absent'), 'E_NO_DEVICE');
    });

    it('eventsSince with an empty prefix reads every event in the id range (the live event stream)', async () => {
      const s = await b.open();
      const start = await s.audit.lastId();
      await s.audit.append('zeta.one', null, { n: 1 });
      await s.audit.append('alpha.two', 'd1', { n: 2 });
      await s.audit.append('mid.three', null, { n: 3 });
      const top = await s.audit.lastId();
      expect((await s.audit.eventsSince(start, top, '', 10)).map((r) => [r.event, r.detail.n])).to.deep.equal([
        ['zeta.one', 1],
        ['alpha.two', 2],
        ['mid.three', 3],
      ]);
      expect((await s.audit.eventsSince(start, top, '', 2)).map((r) => r.event)).to.deep.equal(['zeta.one', 'alpha.two']);
      expect((await s.audit.eventsSince(start + 1, top - 1, '', 10)).map((r) => r.event)).to.deep.equal(['alpha.two']);
      expect((await s.audit.eventsSince(start, top, 'alpha.', 10)).map((r) => r.event)).to.deep.equal(['alpha.two']);
    });

    it('bulk tags many devices in one transaction, audited once per device changed with by; an unknown device or a bad tag changes nothing', async () => {
      const clock = new Clock();
      const s = await fleet(clock);
      const before = await s.audit.lastId();
      const out = await s.devices.bulkTags(['a-online', 'e-flagged', 'd-never'], ['new', 'lab'], ['x'], 'alice-op');
      expect(out).to.deep.equal([
        { deviceId: 'a-online', tags: ['lab', 'new'] },
        { deviceId: 'e-flagged', tags: ['lab', 'new'] },
        { deviceId: 'd-never', tags: ['lab', 'new'] },
      ]);
      const rows = await s.audit.eventsSince(before, await s.audit.lastId(), 'device.tag.', 100);
      expect(rows.map((r) => [r.event, r.deviceId, r.detail])).to.deep.equal([
        ['device.tag.add', 'a-online', { tags: ['new'], by: 'alice-op' }],
        ['device.tag.add', 'e-flagged', { tags: ['new'], by: 'alice-op' }],
        ['device.tag.remove', 'e-flagged', { tags: ['x'], by: 'alice-op' }],
        ['device.tag.add', 'd-never', { tags: ['new', 'lab'], by: 'alice-op' }],
      ]);
      const mark = await s.audit.lastId();
      const err = await rejects(s.devices.bulkTags(['a-online', 'ghost-1', 'ghost-2'], ['more'], [], 'alice-op'), 'E_NO_DEVICE');
      expect(err.message).to.contain('ghost-1').and.contain('ghost-2');
      await rejects(s.devices.bulkTags(['a-online'], ['ok', 'bad tag'], [], 'alice-op'), 'E_BAD_TAG');
      expect(await s.devices.tagsOf('a-online')).to.deep.equal(['lab', 'new']);
      expect(await s.audit.lastId()).to.equal(mark);
      // Nothing to change: nothing audited.
      await s.devices.bulkTags(['a-online'], ['lab'], ['absent'], 'alice-op');
      expect(await s.audit.lastId()).to.equal(mark);
    });
  });
});
