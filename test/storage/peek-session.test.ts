/** Shared storage suite: OperatorStore.peekSession (the live event stream's session check). Same tests on SQLite and PostgreSQL. */
import { expect } from 'chai';
import { forEachBackend } from './backends.js';
import { Clock } from './fixtures.js';

const HASH = '$scrypt$ln=15,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g';

describe('storage: peekSession', function () {
  forEachBackend((b) => {
    it('names a live session without extending it; undefined once it idled out, ended, or its operator is disabled', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await s.operators.add({ name: 'admin-1', role: 'admin', passwordHash: HASH }, 'cli:root');
      await s.operators.add({ name: 'vera', role: 'viewer', passwordHash: HASH }, 'cli:root');
      const limits = { idleMs: 60_000, absoluteMs: 600_000 };
      const { session } = await s.operators.createSession('vera', limits);
      const mark = await s.audit.lastId();
      clock.advance(50_000);
      expect(await s.operators.peekSession(session)).to.deep.equal({ name: 'vera', role: 'viewer' });
      clock.advance(20_000);
      // 70 s after its last use: peeking at 50 s did not move the idle deadline (touchSession would have).
      expect(await s.operators.peekSession(session)).to.equal(undefined);
      expect(await s.audit.lastId()).to.equal(mark);

      const second = await s.operators.createSession('vera', limits);
      expect(await s.operators.peekSession(second.session)).to.deep.equal({ name: 'vera', role: 'viewer' });
      await s.operators.setDisabled('vera', true, 'admin-1');
      expect(await s.operators.peekSession(second.session)).to.equal(undefined);
      expect(await s.operators.peekSession('no-such-session')).to.equal(undefined);
    });
  });
});
