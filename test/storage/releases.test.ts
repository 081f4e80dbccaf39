/** Shared storage suite: agent releases (add, list, lookups, in use, removal, upgrade in flight). Same tests on SQLite and PostgreSQL. */
import { expect } from 'chai';
import { UPGRADE_FETCH_GRACE_MS } from '../../server/storage/records.js';
import { forEachBackend } from './backends.js';
import { ack, addDevice, Clock, manifest, rejects, sendCommand, spec } from './fixtures.js';

describe('storage: releases', function () {
  forEachBackend((b) => {
    it('adds releases (one live per version and arch, audited) and finds them by version, arch and artifact', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      const m1 = manifest('1.0.0', 'arm64');
      const r1 = await s.releases.add(m1, 'jws-1', '/data/releases/1.0.0-arm64');
      expect(r1).to.deep.include({
        version: '1.0.0',
        arch: 'arm64',
        bytes: 1234,
        sha256: m1.artifact.sha256,
        manifest: 'jws-1',
        dir: '/data/releases/1.0.0-arm64',
        addedAt: clock.t,
        removedAt: null,
      });
      expect(r1.id).to.be.a('number');
      await rejects(s.releases.add(manifest('1.0.0', 'arm64'), 'jws', '/x'), 'E_RELEASE_EXISTS');
      clock.advance(10);
      const r2 = await s.releases.add(manifest('1.0.0', 'x64'), 'jws-2', '/d2');
      clock.advance(10);
      const r3 = await s.releases.add(manifest('1.1.0', 'arm64'), 'jws-3', '/d3');
      expect((await s.releases.list()).map((r) => r.id)).to.deep.equal([r3.id, r2.id, r1.id]);
      expect((await s.releases.list({ version: '1.0.0' })).map((r) => r.arch)).to.deep.equal(['arm64', 'x64']);
      expect(await s.releases.get('1.0.0', 'x64')).to.deep.equal(r2);
      expect(await s.releases.get('1.0.0', 'armv7')).to.equal(undefined);
      expect(await s.releases.bySha256(m1.artifact.sha256)).to.deep.equal(r1);
      expect(await s.releases.bySha256('f'.repeat(64))).to.equal(undefined);
      expect(await s.releases.require('1.1.0')).to.deep.equal(r3);
      expect(await s.releases.require('1.0.0', 'x64')).to.deep.equal(r2);
      await rejects(s.releases.require('1.0.0'), 'E_USAGE');
      await rejects(s.releases.require('1.0.0', 'armv7'), 'E_NO_RELEASE');
      await rejects(s.releases.require('9.9.9'), 'E_NO_RELEASE');
      const ev = (await s.audit.query({ event: 'release' })).map((e) => [e.event, e.detail]);
      expect(ev[0]).to.deep.equal(['release.add', { version: '1.0.0', arch: 'arm64', bytes: 1234, sha256: m1.artifact.sha256 }]);
      expect(ev).to.have.length(3);
    });

    it('a release in use (an unfinished upgrade rollout to it, an unanswered upgrade command for it) is not removed; then removed, out of every lookup', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await addDevice(s, 'd1');
      const m = manifest('2.0.0', 'arm64');
      const rel = await s.releases.add(m, 'jws', '/d');
      expect(await s.releases.inUse(rel)).to.equal(undefined);
      const r = await s.rollouts.create(spec({ devices: ['d1'] }, { action: 'upgrade', params: { release: '2.0.0' } }), ['d1']);
      const why = await s.releases.inUse(rel);
      expect(why).to.be.a('string').and.to.contain(r.id);
      await rejects(s.releases.markRemoved(rel), 'E_RELEASE_IN_USE');
      await s.rollouts.setState(r.id, ['running'], 'cancelled', 'no', 'cli');
      expect(await s.releases.inUse(rel)).to.equal(undefined);
      const c = await sendCommand(s, 'd1', { action: 'upgrade', releaseSha256: m.artifact.sha256, expiresAt: clock.t + 1000 });
      expect(await s.releases.inUse(rel))
        .to.be.a('string')
        .and.to.contain('d1');
      clock.advance(1000 + UPGRADE_FETCH_GRACE_MS);
      expect(await s.releases.inUse(rel)).to.equal(undefined);
      clock.t -= 1;
      expect(await s.releases.inUse(rel)).to.be.a('string');
      await s.commands.recordAck('d1', ack(c, { status: 'failed', code: 'E_UPGRADE_DOWNLOAD' }), []);
      expect(await s.releases.inUse(rel)).to.equal(undefined);
      await s.releases.markRemoved(rel);
      expect(await s.releases.get('2.0.0', 'arm64')).to.equal(undefined);
      expect(await s.releases.bySha256(m.artifact.sha256)).to.equal(undefined);
      expect(await s.releases.list()).to.deep.equal([]);
      const ev = (await s.audit.log()).at(-1);
      expect([ev?.event, ev?.detail]).to.deep.equal(['release.remove', { version: '2.0.0', arch: 'arm64', sha256: m.artifact.sha256 }]);
      // Removed: the same version and arch may be added again.
      expect((await s.releases.add(m, 'jws', '/d')).id).to.not.equal(rel.id);
    });

    it('upgradeInFlight: only a sent, unanswered, unvoided upgrade of that artifact to that device, until its expiry plus the grace', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await addDevice(s, 'd1');
      await addDevice(s, 'd2');
      const sha = manifest('3.0.0', 'x64').artifact.sha256;
      const c = await sendCommand(s, 'd1', { action: 'upgrade', releaseSha256: sha, expiresAt: clock.t + 1000 });
      expect(await s.releases.upgradeInFlight('d1', sha)).to.equal(false);
      await s.commands.markSent(c.jti);
      expect(await s.releases.upgradeInFlight('d1', sha)).to.equal(true);
      expect(await s.releases.upgradeInFlight('d2', sha)).to.equal(false);
      expect(await s.releases.upgradeInFlight('d1', 'e'.repeat(64))).to.equal(false);
      clock.advance(1000 + UPGRADE_FETCH_GRACE_MS - 1);
      expect(await s.releases.upgradeInFlight('d1', sha)).to.equal(true);
      clock.advance(1);
      expect(await s.releases.upgradeInFlight('d1', sha)).to.equal(false);
      clock.t -= 1;
      await s.commands.recordAck('d1', ack(c), [{ kind: 'upgraded', version: '3.0.0' }]);
      expect(await s.releases.upgradeInFlight('d1', sha)).to.equal(false);
      // A selftest naming the artifact is not an upgrade.
      const other = await sendCommand(s, 'd2', { action: 'selftest', releaseSha256: sha });
      await s.commands.markSent(other.jti);
      expect(await s.releases.upgradeInFlight('d2', sha)).to.equal(false);
    });
  });
});
