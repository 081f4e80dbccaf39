/** Shared storage suite: enrollment token ids and revocation (DELETE /enrollment/tokens/{id}). Same tests on SQLite and PostgreSQL. */
import { createHash, randomUUID } from 'node:crypto';
import { expect } from 'chai';
import type { Storage } from '../../server/storage/types.js';
import { forEachBackend } from './backends.js';
import { Clock, keyPair, rejects } from './fixtures.js';

const enroll = async (s: Storage, deviceId: string, token: string) => {
  const keys = await keyPair();
  return s.enrollment.enroll({ deviceId, token, enrollmentJti: randomUUID(), signing: keys.signing, encryption: keys.encryption });
};

describe('storage: enrollment token revocation', function () {
  forEachBackend((b) => {
    it('a token has an id (16 hex digits of its hash); revoked, it is listed revoked, no longer pending, and enroll refuses it', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      const created = await s.enrollment.createToken('board-1', 'alice', 60_000, 'admin-ann');
      expect(created.id).to.equal(createHash('sha256').update(created.token).digest('hex').slice(0, 16));
      const other = await s.enrollment.createToken('board-2', 'bob', 60_000);
      const listed = await s.enrollment.listTokens({ deviceId: 'board-1' });
      expect(listed.map((t) => [t.id, t.status, t.revokedAt])).to.deep.equal([[created.id, 'valid', null]]);
      expect((await s.enrollment.pendingEnrollments()).map((t) => t.deviceId)).to.deep.equal(['board-1', 'board-2']);

      clock.advance(1000);
      const revoked = await s.enrollment.revokeToken(created.id, 'admin-ann');
      expect([revoked.id, revoked.deviceId, revoked.status, revoked.revokedAt, revoked.usedAt]).to.deep.equal([
        created.id,
        'board-1',
        'revoked',
        clock.t,
        null,
      ]);
      expect((await s.enrollment.listTokens({ deviceId: 'board-1' }))[0]?.status).to.equal('revoked');
      expect((await s.enrollment.pendingEnrollments()).map((t) => t.deviceId)).to.deep.equal(['board-2']);
      expect((await s.audit.log({ deviceId: 'board-1' })).map((e) => [e.event, e.detail])).to.deep.equal([
        ['token.create', { user_id: 'alice', expires_at: created.expiresAt, token_id: created.id, by: 'admin-ann' }],
        ['token.revoke', { token_id: created.id, user_id: 'alice', by: 'admin-ann' }],
      ]);

      const mark = await s.audit.lastId();
      await rejects(enroll(s, 'board-1', created.token), 'E_TOKEN_REVOKED');
      expect(await s.devices.get('board-1')).to.equal(undefined);
      // Again, an unknown id, or not an id: E_NO_TOKEN, nothing changed.
      await rejects(s.enrollment.revokeToken(created.id, 'admin-ann'), 'E_NO_TOKEN');
      await rejects(s.enrollment.revokeToken('0000000000000000', 'admin-ann'), 'E_NO_TOKEN');
      await rejects(s.enrollment.revokeToken("' OR 1=1 --", 'admin-ann'), 'E_NO_TOKEN');
      await rejects(s.enrollment.revokeToken(created.id.slice(0, 8), 'admin-ann'), 'E_NO_TOKEN');
      expect(await s.audit.lastId()).to.equal(mark);

      // A used token cannot be revoked.
      expect(await enroll(s, 'board-2', other.token)).to.deep.include({ userId: 'bob', repeated: false });
      await rejects(s.enrollment.revokeToken(other.id, 'admin-ann'), 'E_TOKEN_USED');
      expect((await s.enrollment.listTokens({ deviceId: 'board-2' }))[0]?.status).to.equal('used');
    });
  });
});
