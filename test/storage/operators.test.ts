/** Shared storage suite: operator accounts, their API tokens and console sessions. Same tests on SQLite and PostgreSQL. */
import { expect } from 'chai';
import { forEachBackend } from './backends.js';
import { Clock, rejects } from './fixtures.js';
import type { OperatorRole } from '../../server/storage/operator-records.js';
import type { Storage } from '../../server/storage/types.js';

// A stand-in for an encoded hash: the storage checks its form only (hashing is server/operators/password.ts's, tested there).
const HASH = '$scrypt$ln=15,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g';
const HASH2 = '$scrypt$ln=16,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g';

const add = (s: Storage, name: string, role: OperatorRole = 'admin') => s.operators.add({ name, role, passwordHash: HASH }, 'cli:root');
const events = async (s: Storage) => (await s.audit.log()).map((e) => [e.event, e.detail]);

describe('storage: operators', function () {
  forEachBackend((b) => {
    it('adds, lists, changes and removes operators, each change audited with who did it', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      const alice = await add(s, 'alice');
      expect(alice).to.deep.equal({ name: 'alice', role: 'admin', createdAt: clock.t, updatedAt: clock.t, disabledAt: null });
      await add(s, 'bob', 'viewer');
      expect((await s.operators.list()).map((o) => [o.name, o.role])).to.deep.equal([
        ['alice', 'admin'],
        ['bob', 'viewer'],
      ]);
      expect(await s.operators.passwordHash('bob')).to.equal(HASH);
      expect(await s.operators.passwordHash('nobody')).to.equal(undefined);
      clock.advance(1000);
      await s.operators.setPassword('bob', HASH2, 'alice');
      expect(await s.operators.passwordHash('bob')).to.equal(HASH2);
      expect((await s.operators.setRole('bob', 'operator', 'alice')).updatedAt).to.equal(clock.t);
      await s.operators.remove('bob', 'alice');
      expect(await s.operators.get('bob')).to.equal(undefined);
      expect(await events(s)).to.deep.equal([
        ['operator.add', { operator: 'alice', role: 'admin', by: 'cli:root' }],
        ['operator.add', { operator: 'bob', role: 'viewer', by: 'cli:root' }],
        ['operator.passwd', { operator: 'bob', sessions_ended: 0, by: 'alice' }],
        ['operator.role', { operator: 'bob', from: 'viewer', role: 'operator', by: 'alice' }],
        ['operator.remove', { operator: 'bob', role: 'operator', tokens_revoked: 0, sessions_ended: 0, by: 'alice' }],
      ]);
    });

    it('refuses a bad name, role or hash, a duplicate and an unknown operator, and changes nothing', async () => {
      const s = await b.open();
      await add(s, 'alice');
      await rejects(add(s, 'alice', 'viewer'), 'E_OPERATOR_EXISTS');
      await rejects(add(s, 'Alice'), 'E_BAD_OPERATOR');
      await rejects(add(s, '<script>'), 'E_BAD_OPERATOR');
      await rejects(add(s, 'x'.repeat(65)), 'E_BAD_OPERATOR');
      await rejects(s.operators.add({ name: 'carol', role: 'root' as OperatorRole, passwordHash: HASH }, 'cli:root'), 'E_BAD_OPERATOR');
      await rejects(s.operators.add({ name: 'carol', role: 'viewer', passwordHash: 'hunter2-in-clear' }, 'cli:root'), 'E_BAD_OPERATOR');
      await rejects(s.operators.remove('nobody', 'alice'), 'E_NO_OPERATOR');
      await rejects(s.operators.setPassword('nobody', HASH, 'alice'), 'E_NO_OPERATOR');
      await rejects(s.operators.createToken('nobody', 'ci', null, 'alice'), 'E_NO_OPERATOR');
      expect((await s.operators.list()).map((o) => [o.name, o.role])).to.deep.equal([['alice', 'admin']]);
      expect((await events(s)).length).to.equal(1);
    });

    it('keeps one enabled admin: the last cannot be removed, demoted or disabled', async () => {
      const s = await b.open();
      await add(s, 'alice');
      await add(s, 'bob', 'viewer');
      await rejects(s.operators.remove('alice', 'alice'), 'E_LAST_ADMIN');
      await rejects(s.operators.setRole('alice', 'operator', 'alice'), 'E_LAST_ADMIN');
      await rejects(s.operators.setDisabled('alice', true, 'alice'), 'E_LAST_ADMIN');
      await s.operators.remove('bob', 'alice'); // a viewer goes
      await add(s, 'carol');
      await s.operators.setDisabled('carol', true, 'alice');
      await rejects(s.operators.remove('alice', 'carol'), 'E_LAST_ADMIN'); // carol is disabled: alice is the last enabled one
      await s.operators.setDisabled('carol', false, 'alice');
      await s.operators.remove('alice', 'carol');
      expect((await s.operators.list()).map((o) => o.name)).to.deep.equal(['carol']);
    });

    it('two machines removing the two admins at once: exactly one succeeds', async () => {
      const s1 = await b.open();
      const s2 = await b.open();
      await add(s1, 'alice');
      await add(s1, 'bob');
      for (let i = 0; i < 5; i++) {
        const results = await Promise.allSettled([s1.operators.remove('alice', 'x'), s2.operators.remove('bob', 'y')]);
        const ok = results.filter((r) => r.status === 'fulfilled').length;
        expect(ok).to.equal(1);
        const refused = results.find((r) => r.status === 'rejected');
        expect((refused as PromiseRejectedResult).reason.code).to.equal('E_LAST_ADMIN');
        expect((await s1.operators.list()).filter((o) => o.role === 'admin')).to.have.length(1);
        const left = (await s1.operators.list())[0]?.name;
        await add(s1, left === 'alice' ? 'bob' : 'alice');
      }
    });

    it('API tokens: stored hashed, authenticate their operator, refused when revoked, expired, disabled or removed', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await add(s, 'alice');
      await add(s, 'ci', 'operator');
      const { token, record } = await s.operators.createToken('ci', 'nightly rollouts', 3_600_000, 'alice');
      expect(record).to.deep.include({
        operator: 'ci',
        label: 'nightly rollouts',
        createdAt: clock.t,
        expiresAt: clock.t + 3_600_000,
        lastUsedAt: null,
        revokedAt: null,
      });
      const rows = await b.sql(s, 'SELECT hash FROM operator_tokens');
      expect(JSON.stringify(rows)).not.to.include(token);
      expect(await s.operators.authenticateToken(token)).to.deep.equal({ name: 'ci', role: 'operator' });
      expect((await s.operators.listTokens({ operator: 'ci' }))[0]?.lastUsedAt).to.equal(clock.t);
      expect(await s.operators.authenticateToken(`${token}x`)).to.equal(undefined);
      await s.operators.setDisabled('ci', true, 'alice');
      expect(await s.operators.authenticateToken(token)).to.equal(undefined);
      await s.operators.setDisabled('ci', false, 'alice');
      expect(await s.operators.authenticateToken(token)).to.deep.equal({ name: 'ci', role: 'operator' });
      clock.advance(3_600_000);
      expect(await s.operators.authenticateToken(token)).to.equal(undefined);

      const other = await s.operators.createToken('ci', 'other', null, 'alice');
      await s.operators.revokeToken(other.record.id, 'alice');
      await rejects(s.operators.revokeToken(other.record.id, 'alice'), 'E_NO_OPERATOR_TOKEN');
      expect(await s.operators.authenticateToken(other.token)).to.equal(undefined);
      const third = await s.operators.createToken('ci', 'third', null, 'alice');
      await rejects(s.operators.createToken('ci', 'bad\nlabel', null, 'alice'), 'E_BAD_OPERATOR');
      await s.operators.remove('ci', 'alice');
      expect(await s.operators.authenticateToken(third.token)).to.equal(undefined);
      expect(await s.operators.listTokens()).to.deep.equal([]);
      const log = await events(s);
      expect(log.filter(([e]) => String(e).startsWith('operator.token.'))).to.deep.equal([
        ['operator.token.create', { operator: 'ci', token_id: record.id, label: 'nightly rollouts', expires_at: record.expiresAt, by: 'alice' }],
        ['operator.token.create', { operator: 'ci', token_id: other.record.id, label: 'other', expires_at: null, by: 'alice' }],
        ['operator.token.revoke', { operator: 'ci', token_id: other.record.id, by: 'alice' }],
        ['operator.token.create', { operator: 'ci', token_id: third.record.id, label: 'third', expires_at: null, by: 'alice' }],
      ]);
      expect(log.at(-1)).to.deep.equal(['operator.remove', { operator: 'ci', role: 'operator', tokens_revoked: 2, sessions_ended: 0, by: 'alice' }]);
    });

    it('sessions: idle and absolute timeouts, logout, and a password change or disable ends them', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await add(s, 'alice');
      await add(s, 'bob', 'viewer');
      const limits = { idleMs: 60_000, absoluteMs: 150_000 };
      const { session, expiresAt } = await s.operators.createSession('bob', limits);
      expect(expiresAt).to.equal(clock.t + 150_000);
      expect(JSON.stringify(await b.sql(s, 'SELECT hash FROM operator_sessions'))).not.to.include(session);
      for (let i = 0; i < 2; i++) {
        clock.advance(59_000); // under the idle limit each time: touched, stays
        expect(await s.operators.touchSession(session)).to.deep.equal({ name: 'bob', role: 'viewer' });
      }
      clock.advance(40_000); // 158 s after login: past the absolute limit
      expect(await s.operators.touchSession(session)).to.equal(undefined);
      expect(await b.sql(s, 'SELECT hash FROM operator_sessions')).to.deep.equal([]);

      const idle = await s.operators.createSession('bob', limits);
      clock.advance(60_000);
      expect(await s.operators.touchSession(idle.session)).to.equal(undefined);

      const out = await s.operators.createSession('bob', limits);
      expect(await s.operators.endSession(out.session)).to.equal(true);
      expect(await s.operators.endSession(out.session)).to.equal(false);
      expect(await s.operators.touchSession(out.session)).to.equal(undefined);

      const a = await s.operators.createSession('bob', limits);
      await s.operators.setPassword('bob', HASH2, 'alice');
      expect(await s.operators.touchSession(a.session)).to.equal(undefined);
      const c = await s.operators.createSession('bob', limits);
      await s.operators.setDisabled('bob', true, 'alice');
      expect(await s.operators.touchSession(c.session)).to.equal(undefined);
      await rejects(s.operators.createSession('bob', limits), 'E_NO_OPERATOR');
      await rejects(s.operators.createSession('nobody', limits), 'E_NO_OPERATOR');
      const log = await events(s);
      expect(log.filter(([e]) => String(e).startsWith('session.')).map(([e]) => e)).to.deep.equal([
        'session.create',
        'session.create',
        'session.create',
        'session.end',
        'session.create',
        'session.create',
      ]);
      expect(log.find(([e]) => e === 'operator.passwd')).to.deep.equal(['operator.passwd', { operator: 'bob', sessions_ended: 1, by: 'alice' }]);
      expect(log.find(([e]) => e === 'operator.disable')).to.deep.equal(['operator.disable', { operator: 'bob', sessions_ended: 1, by: 'alice' }]);
    });
  });
});
