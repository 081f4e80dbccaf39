/** Shared storage suite: agent releases (add, list, lookups, in use, removal, upgrade in flight). Same tests on SQLite and PostgreSQL. */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { FILE_SLICE_BYTES } from '../../server/storage/postgres/releases.js';
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

    it("keeps a release's files for every machine (PostgreSQL: stored with the row, replaced by putFiles, gone with removal; SQLite: one machine, none kept)", async () => {
      const s = await b.open();
      const other = await b.open(); // a second machine on the same registry
      const m = manifest('4.0.0', 'arm64');
      // Bigger than one read slice, not a multiple of it: files() reassembles it byte for byte.
      const artifact = randomBytes(FILE_SLICE_BYTES + 12_345);
      const files = [
        { name: 'artifact.tar.gz', bytes: artifact },
        { name: 'index.bin', bytes: randomBytes(64) },
        { name: 'manifest.jws', bytes: Buffer.from('jws-4\n') },
      ];
      const rel = await s.releases.add(m, 'jws-4', '/d4', files);
      const bare = await s.releases.add(manifest('4.0.1', 'arm64'), 'jws-41', '/d41');
      if (b.name === 'sqlite') {
        expect(s.releases.keepsFiles).to.equal(false);
        await s.releases.putFiles(rel.id, files);
        expect(await other.releases.files(m.artifact.sha256)).to.equal(undefined);
        return;
      }
      expect(s.releases.keepsFiles).to.equal(true);
      const got = await other.releases.files(m.artifact.sha256);
      expect(got?.map((f) => f.name)).to.deep.equal(['artifact.tar.gz', 'index.bin', 'manifest.jws']);
      expect(got?.[0]?.bytes.equals(artifact)).to.equal(true);
      expect(got?.[2]?.bytes.toString()).to.equal('jws-4\n');
      expect(await other.releases.files(bare.sha256)).to.equal(undefined);
      expect(await other.releases.files('f'.repeat(64))).to.equal(undefined);
      // putFiles adds and replaces by name (a release added without them, `registry migrate`).
      await other.releases.putFiles(bare.id, [{ name: 'index.bin', bytes: Buffer.from('one') }]);
      await other.releases.putFiles(bare.id, [
        { name: 'index.bin', bytes: Buffer.from('two') },
        { name: 'manifest.jws', bytes: Buffer.from('x') },
      ]);
      expect((await s.releases.files(bare.sha256))?.map((f) => [f.name, f.bytes.toString()])).to.deep.equal([
        ['index.bin', 'two'],
        ['manifest.jws', 'x'],
      ]);
      // Removal drops them (the row stays, as a record); a removed release takes none.
      await s.releases.markRemoved(rel);
      expect(await other.releases.files(m.artifact.sha256)).to.equal(undefined);
      expect(await b.sql(s, 'SELECT name FROM release_files WHERE release_id = $1', [rel.id])).to.deep.equal([]);
      await rejects(other.releases.putFiles(rel.id, files), 'E_NO_RELEASE');
      expect(await b.sql(s, 'SELECT name FROM release_files WHERE release_id = $1', [rel.id])).to.deep.equal([]);
      // A failed add stores no files: the row and its files are one transaction.
      await rejects(s.releases.add(manifest('4.0.1', 'arm64'), 'jws', '/x', files), 'E_RELEASE_EXISTS');
      expect(await b.sql(s, 'SELECT COUNT(*)::int AS n FROM release_files')).to.deep.equal([{ n: 2 }]);
    });
  });
});
