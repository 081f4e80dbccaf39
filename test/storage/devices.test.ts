/** Shared storage suite: devices, keys, tags, presence (reports). Same tests on SQLite and PostgreSQL. */
import { expect } from 'chai';
import { PREVIOUS_KEY_GRACE_MS } from '../../server/storage/rules.js';
import { forEachBackend } from './backends.js';
import { addDevice, ack, Clock, keyPair, rejects, report, sendCommand } from './fixtures.js';

describe('storage: devices', function () {
  forEachBackend((b) => {
    it('adds a device with its keys and reads it back as added (get, require, audit)', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      const keys = await keyPair();
      const added = await s.devices.add({ id: 'dev-1', userId: 'alice', origin: 'jwks', signing: keys.signing, encryption: keys.encryption });
      const got = await s.devices.require('dev-1');
      expect(got).to.deep.equal(added);
      expect(got).to.deep.include({
        id: 'dev-1',
        userId: 'alice',
        state: 'registered',
        nextSeq: 1,
        origin: 'jwks',
        createdAt: clock.t,
        updatedAt: clock.t,
        enrolledAt: null,
        confirmedAt: null,
        decommissionedAt: null,
        flag: null,
        arch: null,
        agentVersion: null,
      });
      expect(got.signing).to.deep.equal(keys.signing);
      expect(got.encryption).to.deep.equal(keys.encryption);
      expect(got.tags).to.deep.equal([]);
      expect(got.presence).to.deep.equal({ lastSeenAt: null, reported: null, session: null, conn: null, intervalS: null, state: null });
      expect(got.keys.map((k) => [k.kid, k.use, k.status, k.addedAt, k.retiredAt]).sort()).to.deep.equal(
        [
          [keys.signing.kid, 'sig', 'current', clock.t, null],
          [keys.encryption.kid, 'enc', 'current', clock.t, null],
        ].sort(),
      );
      const log = await s.audit.log({ deviceId: 'dev-1' });
      expect(log.map((e) => [e.event, e.detail])).to.deep.equal([
        ['device.add', { origin: 'jwks', user_id: 'alice', signing_kid: keys.signing.kid, encryption_kid: keys.encryption.kid }],
      ]);
      expect(await s.devices.get('absent')).to.equal(undefined);
      await rejects(s.devices.require('absent'), 'E_NO_DEVICE');
    });

    it('says which backend it is; open until closed', async () => {
      const s = await b.open();
      expect(s.info.kind).to.equal(b.name);
      expect(s.info.location).to.be.a('string').with.length.above(0);
      expect(s.open).to.equal(true);
      await s.close();
      expect(s.open).to.equal(false);
      // A second storage on the same registry still works.
      const t = await b.open();
      await addDevice(t, 'after-close');
      expect((await t.devices.require('after-close')).id).to.equal('after-close');
    });

    it('refuses to add a registered device again (E_DEVICE_EXISTS, nothing changed); --replace makes the new keys current, the old previous', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      const old = await addDevice(s, 'dev-1', { userId: 'alice', state: 'provisioned' });
      const next = await keyPair();
      await rejects(s.devices.add({ id: 'dev-1', userId: 'bob', origin: 'jwks', signing: next.signing, encryption: next.encryption }), 'E_DEVICE_EXISTS');
      const unchanged = await s.devices.require('dev-1');
      expect([unchanged.userId, unchanged.state, unchanged.encryption?.kid]).to.deep.equal(['alice', 'provisioned', old.encryption.kid]);
      clock.advance(1000);
      const replaced = await s.devices.add(
        { id: 'dev-1', userId: 'bob', origin: 'host-keys', signing: next.signing, encryption: next.encryption, state: 'registered' },
        { replace: true },
      );
      expect([replaced.userId, replaced.state, replaced.origin, replaced.updatedAt]).to.deep.equal(['bob', 'registered', 'host-keys', clock.t]);
      expect([replaced.signing?.kid, replaced.encryption?.kid]).to.deep.equal([next.signing.kid, next.encryption.kid]);
      const status = Object.fromEntries(replaced.keys.map((k) => [k.kid, k.status]));
      expect(status).to.deep.equal({
        [old.signing.kid]: 'previous',
        [old.encryption.kid]: 'previous',
        [next.signing.kid]: 'current',
        [next.encryption.kid]: 'current',
      });
      expect((await s.audit.log({ deviceId: 'dev-1' })).map((e) => e.event)).to.deep.equal(['device.add', 'device.add']);
    });

    it('lists devices by id, filtered by user, states and tag; a tag that cannot be one is E_BAD_TAG', async () => {
      const s = await b.open();
      await addDevice(s, 'c-dev', { userId: 'alice', state: 'registered' });
      await addDevice(s, 'a-dev', { userId: 'bob', state: 'provisioned' });
      await addDevice(s, 'b-dev', { userId: 'alice', state: 'provisioned' });
      await s.devices.addTags('c-dev', ['lab']);
      await s.devices.addTags('a-dev', ['lab', 'roof']);
      const ids = (xs: { id: string }[]): string[] => xs.map((d) => d.id);
      expect(ids(await s.devices.list())).to.deep.equal(['a-dev', 'b-dev', 'c-dev']);
      expect(ids(await s.devices.list({ userId: 'alice' }))).to.deep.equal(['b-dev', 'c-dev']);
      expect(ids(await s.devices.list({ states: ['provisioned'] }))).to.deep.equal(['a-dev', 'b-dev']);
      expect(ids(await s.devices.list({ tag: 'lab' }))).to.deep.equal(['a-dev', 'c-dev']);
      expect(ids(await s.devices.list({ tag: 'lab', userId: 'alice', states: ['registered'] }))).to.deep.equal(['c-dev']);
      expect(ids(await s.devices.list({ tag: 'nothing' }))).to.deep.equal([]);
      await rejects(s.devices.list({ tag: 'no spaces' }), 'E_BAD_TAG');
    });

    it('adds and removes tags (sorted, idempotent, audited with what changed); a bad tag adds none; an unknown device is E_NO_DEVICE', async () => {
      const s = await b.open();
      await addDevice(s, 'd1');
      await addDevice(s, 'd2');
      expect(await s.devices.addTags('d1', ['zone:b', 'lab'])).to.deep.equal(['lab', 'zone:b']);
      expect(await s.devices.addTags('d1', ['lab', 'roof'])).to.deep.equal(['lab', 'roof', 'zone:b']);
      await rejects(s.devices.addTags('d1', ['ok-tag', '-bad']), 'E_BAD_TAG');
      await rejects(s.devices.addTags('d1', ['x'.repeat(65)]), 'E_BAD_TAG');
      expect(await s.devices.tagsOf('d1')).to.deep.equal(['lab', 'roof', 'zone:b']);
      await rejects(s.devices.addTags('nope', ['lab']), 'E_NO_DEVICE');
      await s.devices.addTags('d2', ['lab']);
      expect(await s.devices.listTags()).to.deep.equal([
        { tag: 'lab', devices: 2 },
        { tag: 'roof', devices: 1 },
        { tag: 'zone:b', devices: 1 },
      ]);
      expect(await s.devices.removeTags('d1', ['lab', 'absent'])).to.deep.equal(['roof', 'zone:b']);
      expect((await s.devices.require('d1')).tags).to.deep.equal(['roof', 'zone:b']);
      const tagEvents = (await s.audit.log({ deviceId: 'd1' })).filter((e) => e.event.startsWith('device.tag.')).map((e) => [e.event, e.detail]);
      expect(tagEvents).to.deep.equal([
        ['device.tag.add', { tags: ['zone:b', 'lab'] }],
        ['device.tag.add', { tags: ['roof'] }],
        ['device.tag.remove', { tags: ['lab'] }],
      ]);
      await rejects(s.devices.removeTags('nope', ['lab']), 'E_NO_DEVICE');
    });

    it('removes a device with its keys, tags and unused tokens; its commands and audit stay', async () => {
      const s = await b.open();
      await addDevice(s, 'gone');
      await s.devices.addTags('gone', ['lab']);
      const c = await sendCommand(s, 'gone');
      await s.enrollment.createToken('gone', 'alice', 60_000);
      await s.devices.remove('gone');
      expect(await s.devices.get('gone')).to.equal(undefined);
      expect(await s.devices.listTags()).to.deep.equal([]);
      expect(await s.enrollment.listTokens({ deviceId: 'gone' })).to.deep.equal([]);
      expect((await s.commands.get(c.jti))?.deviceId).to.equal('gone');
      expect((await s.audit.log({ deviceId: 'gone' })).map((e) => e.event)).to.include.members(['device.add', 'command.create', 'device.remove']);
      expect(await s.devices.verificationKeys('gone')).to.deep.equal([]);
      await rejects(s.devices.remove('gone'), 'E_NO_DEVICE');
      // Added again: a new device (seq from 1, no tags).
      await addDevice(s, 'gone');
      const again = await s.devices.require('gone');
      expect([again.nextSeq, again.tags]).to.deep.equal([1, []]);
    });

    it('records reports by position: online then offline, duplicates and stale ones change nothing', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await addDevice(s, 'r1');
      await rejects(s.devices.recordReport('nope', report('nope')), 'E_NO_DEVICE');
      const first = report('r1', { n: 1, last_seq: 3, arch: 'arm64', agent_version: '1.2.0', interval_s: 30 });
      expect(await s.devices.recordReport('r1', first)).to.deep.equal({ kind: 'recorded', presence: 'online' });
      let d = await s.devices.require('r1');
      expect(d.presence).to.deep.include({ lastSeenAt: clock.t, reported: 'online', session: 'sess-1', conn: 1, intervalS: 30 });
      expect(d.presence.state).to.deep.include({ reason: 'connect', last_seq: 3, agent_version: '1.2.0', upgrade: null });
      expect([d.arch, d.agentVersion]).to.deep.equal(['arm64', '1.2.0']);
      const seenAt = clock.t;
      clock.advance(5000);
      expect(await s.devices.recordReport('r1', first)).to.deep.equal({ kind: 'duplicate' });
      expect(await s.devices.recordReport('r1', report('r1', { n: 1 }))).to.deep.equal({ kind: 'stale' });
      expect((await s.devices.require('r1')).presence.lastSeenAt).to.equal(seenAt);
      // A newer interval report; no arch in it: the recorded arch stays.
      expect(await s.devices.recordReport('r1', report('r1', { reason: 'interval', n: 2, last_seq: 4, agent_version: '1.3.0' }))).to.deep.equal({
        kind: 'recorded',
        presence: 'online',
      });
      d = await s.devices.require('r1');
      expect([d.presence.lastSeenAt, d.presence.state?.last_seq, d.arch, d.agentVersion]).to.deep.equal([clock.t, 4, 'arm64', '1.3.0']);
      const lastSeen = clock.t;
      clock.advance(5000);
      // The will of this connection: offline, last-seen unchanged; its older last_seq keeps the reported state's.
      expect(await s.devices.recordReport('r1', report('r1', { reason: 'offline', n: 0, last_seq: 2, kids: { sig: 'old', enc: 'old' } }))).to.deep.equal({
        kind: 'recorded',
        presence: 'offline',
      });
      d = await s.devices.require('r1');
      expect([d.presence.reported, d.presence.lastSeenAt, d.presence.state?.reason, d.presence.state?.last_seq, d.presence.state?.kids.sig]).to.deep.equal([
        'offline',
        lastSeen,
        'offline',
        4,
        'sig-kid',
      ]);
      // Nothing of that connection after its will; a new connection is newer.
      expect(await s.devices.recordReport('r1', report('r1', { reason: 'interval', n: 9 }))).to.deep.equal({ kind: 'stale' });
      expect(await s.devices.recordReport('r1', report('r1', { conn: 2, n: 1, last_seq: 5 }))).to.deep.equal({ kind: 'recorded', presence: 'online' });
      expect((await s.devices.require('r1')).presence).to.deep.include({ reported: 'online', conn: 2, lastSeenAt: clock.t });
    });

    it('legacy reports (no position): accepted until the device sends positions; a legacy offline only for the connection held', async () => {
      const s = await b.open();
      await addDevice(s, 'l1');
      const legacy = (fields: Parameters<typeof report>[1]) => {
        const r = report('l1', fields);
        delete r.run;
        delete r.n;
        return r;
      };
      expect((await s.devices.recordReport('l1', legacy({ session: 's1', conn: 1 }))).kind).to.equal('recorded');
      expect((await s.devices.recordReport('l1', legacy({ reason: 'offline', session: 's1', conn: 2 }))).kind).to.equal('stale');
      expect(await s.devices.recordReport('l1', legacy({ reason: 'offline', session: 's1', conn: 1 }))).to.deep.equal({
        kind: 'recorded',
        presence: 'offline',
      });
      expect((await s.devices.recordReport('l1', report('l1', { run: 1, n: 1 }))).kind).to.equal('recorded');
      expect((await s.devices.recordReport('l1', legacy({ session: 's9', conn: 1 }))).kind).to.equal('stale');
    });

    it('verification keys: after a rotate the replaced signing key verifies for the grace period only; a decommission retires every key', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      const old = await addDevice(s, 'k1');
      const next = await keyPair();
      const rot = await sendCommand(s, 'k1', { action: 'rotate' });
      clock.advance(1000);
      const out = await s.commands.recordAck('k1', ack(rot), [{ kind: 'keys-rotated', signing: next.signing, encryption: next.encryption }]);
      expect(out.kind).to.equal('recorded');
      const kids = async (): Promise<string[]> => (await s.devices.verificationKeys('k1')).map((k) => k.kid).sort();
      expect(await kids()).to.deep.equal([old.signing.kid, next.signing.kid].sort());
      expect((await s.devices.reportVerificationKeys('k1')).map((k) => k.kid).sort()).to.deep.equal([old.signing.kid, next.signing.kid].sort());
      clock.advance(PREVIOUS_KEY_GRACE_MS);
      expect(await kids()).to.deep.equal([old.signing.kid, next.signing.kid].sort());
      clock.advance(1);
      expect(await kids()).to.deep.equal([next.signing.kid]);
      const del = await sendCommand(s, 'k1', { action: 'delete' });
      await s.commands.recordAck('k1', ack(del), [{ kind: 'decommissioned' }]);
      const gone = await s.devices.require('k1');
      expect([gone.state, gone.decommissionedAt, gone.signing, gone.encryption]).to.deep.equal(['decommissioned', clock.t, undefined, undefined]);
      expect(gone.keys.every((k) => k.status === 'retired')).to.equal(true);
      expect(await kids()).to.deep.equal([next.signing.kid]);
      clock.advance(PREVIOUS_KEY_GRACE_MS + 1);
      expect(await kids()).to.deep.equal([]);
    });
  });
});
