/** Shared storage suite: enrollment tokens and enrollment. Same tests on SQLite and PostgreSQL. */
import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import { forEachBackend } from './backends.js';
import { ack, Clock, keyPair, rejects, report, sendCommand } from './fixtures.js';
import type { KeyPair } from './fixtures.js';
import type { Storage } from '../../server/storage/types.js';

const enroll = (s: Storage, deviceId: string, token: string, keys: KeyPair, jti = randomUUID()) =>
  s.enrollment.enroll({ deviceId, token, enrollmentJti: jti, signing: keys.signing, encryption: keys.encryption });

describe('storage: enrollment', function () {
  forEachBackend((b) => {
    it('a token is listed (valid, device unknown) and pending until used; enrolling consumes it and registers the keys', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      const { token, expiresAt, id } = await s.enrollment.createToken('board-1', 'alice', 60_000);
      expect(token).to.be.a('string').with.length.above(20);
      expect(expiresAt).to.equal(clock.t + 60_000);
      const listed = {
        id,
        revokedAt: null,
        deviceId: 'board-1',
        userId: 'alice',
        createdAt: clock.t,
        expiresAt,
        usedAt: null,
        status: 'valid',
        enrolledAt: null,
        deviceState: null,
      };
      expect(await s.enrollment.listTokens()).to.deep.equal([listed]);
      expect(await s.enrollment.pendingEnrollments()).to.deep.equal([listed]);
      expect((await s.audit.log({ deviceId: 'board-1' })).map((e) => [e.event, e.detail])).to.deep.equal([
        ['token.create', { user_id: 'alice', expires_at: expiresAt }],
      ]);

      clock.advance(1000);
      const keys = await keyPair();
      const jti = randomUUID();
      expect(await enroll(s, 'board-1', token, keys, jti)).to.deep.equal({ userId: 'alice', repeated: false });
      const d = await s.devices.require('board-1');
      expect([d.state, d.origin, d.userId, d.enrolledAt, d.signing?.kid, d.encryption?.kid]).to.deep.equal([
        'enrolling',
        'enrollment',
        'alice',
        clock.t,
        keys.signing.kid,
        keys.encryption.kid,
      ]);
      expect(await s.enrollment.listTokens({ deviceId: 'board-1' })).to.deep.equal([
        { ...listed, usedAt: clock.t, status: 'used', enrolledAt: clock.t, deviceState: 'enrolling' },
      ]);
      expect(await s.enrollment.pendingEnrollments()).to.deep.equal([]);
      const last = (await s.audit.log({ deviceId: 'board-1' })).at(-1);
      expect([last?.event, last?.detail]).to.deep.equal([
        'device.enroll',
        { user_id: 'alice', signing_kid: keys.signing.kid, encryption_kid: keys.encryption.kid, enrollment_jti: jti },
      ]);
    });

    it('a repeat of the same enrollment is `repeated`; other keys are E_TOKEN_USED and change nothing', async () => {
      const s = await b.open();
      const { token } = await s.enrollment.createToken('board-1', 'alice', 60_000);
      const keys = await keyPair();
      await enroll(s, 'board-1', token, keys);
      expect(await enroll(s, 'board-1', token, keys)).to.deep.equal({ userId: 'alice', repeated: true });
      expect((await s.audit.log({ deviceId: 'board-1' })).at(-1)?.event).to.equal('device.enroll.repeat');
      const other = await keyPair();
      await rejects(enroll(s, 'board-1', token, other), 'E_TOKEN_USED');
      expect((await s.devices.require('board-1')).signing?.kid).to.equal(keys.signing.kid);
      // Once provisioned, the same keys again are no longer a repeat.
      const req = await sendCommand(s, 'board-1', { action: 'request', bindUser: 'alice' });
      await s.commands.recordAck('board-1', ack(req), [
        { kind: 'bind-user', userId: 'alice' },
        { kind: 'provisioned', userId: 'alice' },
      ]);
      await rejects(enroll(s, 'board-1', token, keys), 'E_TOKEN_USED');
    });

    it('refuses an unknown token, an expired one and one bound to another device, and changes nothing', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      const keys = await keyPair();
      const { token } = await s.enrollment.createToken('board-1', 'alice', 60_000);
      await rejects(enroll(s, 'board-1', 'x'.repeat(43), keys), 'E_TOKEN_INVALID');
      await rejects(enroll(s, 'board-2', token, keys), 'E_TOKEN_DEVICE');
      expect(await s.devices.get('board-2')).to.equal(undefined);
      expect((await s.enrollment.listTokens())[0]?.status).to.equal('valid');
      clock.advance(60_000);
      expect((await s.enrollment.listTokens())[0]?.status).to.equal('expired');
      expect((await s.enrollment.pendingEnrollments()).map((t) => [t.deviceId, t.status])).to.deep.equal([['board-1', 'expired']]);
      await rejects(enroll(s, 'board-1', token, keys), 'E_TOKEN_EXPIRED');
      expect(await s.devices.get('board-1')).to.equal(undefined);
      expect((await s.enrollment.listTokens())[0]?.usedAt).to.equal(null);
    });

    it('enrolling again (new token, new keys) clears the flag and the decommission, makes the old keys previous and forgets the old reports', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      const first = await keyPair();
      await enroll(s, 'board-1', (await s.enrollment.createToken('board-1', 'alice', 60_000)).token, first);
      await s.devices.recordReport('board-1', report('board-1', { run: 3, n: 5 }));
      // A contradiction flags it; a decommission retires its keys.
      const c = await sendCommand(s, 'board-1');
      await s.commands.recordAck('board-1', ack(c, { status: 'rejected', code: 'E_X' }), []);
      await s.commands.recordAck('board-1', ack(c), []);
      expect((await s.devices.require('board-1')).flag).to.not.equal(null);
      const del = await sendCommand(s, 'board-1', { action: 'delete' });
      await s.commands.recordAck('board-1', ack(del), [{ kind: 'decommissioned' }]);
      await rejects(s.seq.allocate('board-1'), 'E_DECOMMISSIONED');

      clock.advance(1000);
      const second = await keyPair();
      expect(await enroll(s, 'board-1', (await s.enrollment.createToken('board-1', 'bob', 60_000)).token, second)).to.deep.equal({
        userId: 'bob',
        repeated: false,
      });
      const d = await s.devices.require('board-1');
      expect([d.state, d.userId, d.flag, d.decommissionedAt, d.enrolledAt, d.signing?.kid]).to.deep.equal([
        'enrolling',
        'bob',
        null,
        null,
        clock.t,
        second.signing.kid,
      ]);
      expect(d.presence.state).to.equal(null);
      expect(d.presence.session).to.equal(null);
      // A report of the new identity starts its positions afresh.
      expect((await s.devices.recordReport('board-1', report('board-1', { run: 1, n: 1 }))).kind).to.equal('recorded');
      // The old signing key was retired by the delete: it no longer verifies reports (an earlier enrollment's key).
      expect((await s.devices.reportVerificationKeys('board-1')).map((k) => k.kid)).to.deep.equal([second.signing.kid]);
      expect((await s.seq.allocate('board-1')).seq).to.equal(3);
    });

    it('lists tokens newest first (one device or all) and as pending only the newest unused token of a device not enrolled since', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await s.enrollment.createToken('b-board', 'alice', 60_000);
      clock.advance(10);
      const a1 = await s.enrollment.createToken('a-board', 'alice', 60_000);
      clock.advance(10);
      await enroll(s, 'a-board', a1.token, await keyPair());
      clock.advance(10);
      await s.enrollment.createToken('c-board', 'carol', 60_000);
      expect((await s.enrollment.listTokens()).map((t) => [t.deviceId, t.status])).to.deep.equal([
        ['c-board', 'valid'],
        ['a-board', 'used'],
        ['b-board', 'valid'],
      ]);
      expect((await s.enrollment.pendingEnrollments()).map((t) => t.deviceId)).to.deep.equal(['b-board', 'c-board']);
      // Re-bundled after its enrollment: pending again, with the newest token only.
      clock.advance(10);
      await s.enrollment.createToken('a-board', 'alice', 60_000);
      clock.advance(10);
      const newest = await s.enrollment.createToken('a-board', 'alice', 120_000);
      const pending = await s.enrollment.pendingEnrollments();
      expect(pending.map((t) => [t.deviceId, t.expiresAt])).to.deep.equal([
        ['a-board', newest.expiresAt],
        ['b-board', 1_700_000_000_000 + 60_000],
        ['c-board', 1_700_000_000_030 + 60_000],
      ]);
      expect((await s.enrollment.listTokens({ deviceId: 'a-board' })).map((t) => t.status)).to.deep.equal(['valid', 'valid', 'used']);
    });
  });
});
