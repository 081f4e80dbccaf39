/** Shared storage suite: the audit log (append, log, query filters, lastId, eventsSince, append-only). Same tests on SQLite and PostgreSQL. */
import { expect } from 'chai';
import type { AuditRecord } from '../../server/storage/records.js';
import { forEachBackend } from './backends.js';
import { Clock, rejectsAny } from './fixtures.js';

describe('storage: audit', function () {
  forEachBackend((b) => {
    const events = (xs: AuditRecord[]): string[] => xs.map((e) => e.event);

    it('appends rows (the clock, the device, the detail) and logs the newest, oldest first, of all or one device; lastId', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      expect(await s.audit.lastId()).to.equal(0);
      expect(await s.audit.log()).to.deep.equal([]);
      await s.audit.append('e.one', 'd1', { n: 1, nested: { ok: true, list: [1, 'two'] } });
      clock.advance(5);
      await s.audit.append('e.two', null);
      clock.advance(5);
      await s.audit.append('e.three', 'd1', { text: 'ünïcode "quoted"' });
      const all = await s.audit.log();
      expect(all.map((e) => [e.event, e.deviceId, e.at, e.detail])).to.deep.equal([
        ['e.one', 'd1', clock.t - 10, { n: 1, nested: { ok: true, list: [1, 'two'] } }],
        ['e.two', null, clock.t - 5, {}],
        ['e.three', 'd1', clock.t, { text: 'ünïcode "quoted"' }],
      ]);
      expect(all[0]?.id).to.be.below(all[1]?.id as number);
      expect(all[1]?.id).to.be.below(all[2]?.id as number);
      expect(await s.audit.lastId()).to.equal(all[2]?.id);
      expect(events(await s.audit.log({ limit: 2 }))).to.deep.equal(['e.two', 'e.three']);
      expect(events(await s.audit.log({ deviceId: 'd1' }))).to.deep.equal(['e.one', 'e.three']);
      expect(events(await s.audit.log({ deviceId: 'd1', limit: 1 }))).to.deep.equal(['e.three']);
      expect(await s.audit.log({ deviceId: 'nobody' })).to.deep.equal([]);
    });

    it('query filters by device, rollout (rollout_id or fanout_id), event name or dotted prefix, time range, and keeps the newest `limit`', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      const rows: [string, string | null, Record<string, unknown>][] = [
        ['rollout.create', null, { rollout_id: 'R1' }],
        ['command.create', 'd1', { fanout_id: 'R1', jti: 'j1' }],
        ['command.ack', 'd1', { jti: 'j1' }],
        ['rollouts.other', null, { rollout_id: 'R1' }],
        ['rollout', null, { rollout_id: 'R2' }],
        ['a_b.c', 'd2', {}],
        ['axb.c', 'd2', {}],
        ['rollout.finished', null, { rollout_id: 'R1' }],
      ];
      for (const [event, device, detail] of rows) {
        await s.audit.append(event, device, detail);
        clock.advance(10);
      }
      const t0 = clock.t - 80;
      expect(events(await s.audit.query({}))).to.deep.equal(rows.map((r) => r[0]));
      expect(events(await s.audit.query({ deviceId: 'd1' }))).to.deep.equal(['command.create', 'command.ack']);
      expect(events(await s.audit.query({ rolloutId: 'R1' }))).to.deep.equal(['rollout.create', 'command.create', 'rollouts.other', 'rollout.finished']);
      expect(events(await s.audit.query({ event: 'rollout' }))).to.deep.equal(['rollout.create', 'rollout', 'rollout.finished']);
      expect(events(await s.audit.query({ event: 'command.ack' }))).to.deep.equal(['command.ack']);
      expect(events(await s.audit.query({ event: 'command' }))).to.deep.equal(['command.create', 'command.ack']);
      expect(events(await s.audit.query({ event: 'a_b' }))).to.deep.equal(['a_b.c']);
      expect(events(await s.audit.query({ event: 'a%' }))).to.deep.equal([]);
      expect(events(await s.audit.query({ event: 'comm' }))).to.deep.equal([]);
      expect(events(await s.audit.query({ rolloutId: 'R1', event: 'rollout' }))).to.deep.equal(['rollout.create', 'rollout.finished']);
      expect(events(await s.audit.query({ since: t0 + 20, until: t0 + 40 }))).to.deep.equal(['command.ack', 'rollouts.other', 'rollout']);
      expect(events(await s.audit.query({ limit: 2 }))).to.deep.equal(['axb.c', 'rollout.finished']);
      expect(events(await s.audit.query({ rolloutId: 'R1', limit: 1 }))).to.deep.equal(['rollout.finished']);
      expect(await s.audit.query({ rolloutId: 'R9' })).to.deep.equal([]);
    });

    it('eventsSince: rows with afterId < id <= upTo whose event starts with the prefix, oldest first, at most `limit`', async () => {
      const s = await b.open();
      for (const e of ['rollout.create', 'command.create', 'rollout.pause', 'rolloutx', 'rollout.resume', 'rollout.finished'])
        await s.audit.append(e, null, { e });
      const all = await s.audit.log();
      const id = (i: number): number => all[i]?.id as number;
      expect(events(await s.audit.eventsSince(0, await s.audit.lastId(), 'rollout.', 100))).to.deep.equal([
        'rollout.create',
        'rollout.pause',
        'rollout.resume',
        'rollout.finished',
      ]);
      expect(events(await s.audit.eventsSince(id(0), id(4), 'rollout.', 100))).to.deep.equal(['rollout.pause', 'rollout.resume']);
      expect(events(await s.audit.eventsSince(id(0), id(5), 'rollout.', 2))).to.deep.equal(['rollout.pause', 'rollout.resume']);
      expect(events(await s.audit.eventsSince(id(5), id(5) + 100, 'rollout.', 10))).to.deep.equal([]);
      const [first] = await s.audit.eventsSince(0, id(0), 'rollout.', 1);
      expect(first).to.deep.equal(all[0]);
    });

    it('the audit log is append-only: an UPDATE or DELETE is refused by the database and changes nothing', async () => {
      const s = await b.open();
      await s.audit.append('keep.me', 'd1', { a: 1 });
      const before = await s.audit.log();
      const upd = await rejectsAny(b.sql(s, "UPDATE audit SET event = 'changed'"));
      expect(upd.message).to.match(/append-only/);
      const del = await rejectsAny(b.sql(s, 'DELETE FROM audit'));
      expect(del.message).to.match(/append-only/);
      expect(await s.audit.log()).to.deep.equal(before);
    });
  });
});
