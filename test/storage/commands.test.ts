/** Shared storage suite: seq allocation, commands, acks with their effects, contradictions. Same tests on SQLite and PostgreSQL. */
import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import { RegistryError } from '../../server/storage/errors.js';
import { ACK_CONTRADICTION_EVENT } from '../../server/storage/rules.js';
import type { NewCommand } from '../../server/storage/records.js';
import { forEachBackend } from './backends.js';
import { ack, addDevice, Clock, keyPair, manifest, rejects, rejectsAny, sendCommand } from './fixtures.js';

describe('storage: seq, commands, acks', function () {
  forEachBackend((b) => {
    it('allocates seqs 1, 2, 3 per device with the device; refuses unknown and decommissioned devices without taking one', async () => {
      const s = await b.open();
      const keys = await addDevice(s, 'd1');
      await addDevice(s, 'd2');
      const first = await s.seq.allocate('d1');
      expect(first.seq).to.equal(1);
      expect([first.device.id, first.device.encryption?.kid]).to.deep.equal(['d1', keys.encryption.kid]);
      expect(first.device.nextSeq).to.equal(1);
      expect((await s.seq.allocate('d1')).seq).to.equal(2);
      expect((await s.seq.allocate('d2')).seq).to.equal(1);
      expect((await s.devices.require('d1')).nextSeq).to.equal(3);
      await rejects(s.seq.allocate('nope'), 'E_NO_DEVICE');
      await addDevice(s, 'dead', { state: 'decommissioned' });
      await rejects(s.seq.allocate('dead'), 'E_DECOMMISSIONED');
      expect((await s.devices.require('dead')).nextSeq).to.equal(1);
    });

    it('allocateMany: one seq per id in order, a device that cannot have one gets its RegistryError in place', async () => {
      const s = await b.open();
      await addDevice(s, 'd1');
      await addDevice(s, 'dead', { state: 'decommissioned' });
      const out = await s.seq.allocateMany(['d1', 'nope', 'd1', 'dead']);
      expect(out).to.have.length(4);
      expect((out[0] as { seq: number }).seq).to.equal(1);
      expect(out[1]).to.be.instanceOf(RegistryError).with.property('code', 'E_NO_DEVICE');
      expect((out[2] as { seq: number; device: { id: string } }).seq).to.equal(2);
      expect((out[2] as { device: { id: string } }).device.id).to.equal('d1');
      expect(out[3]).to.be.instanceOf(RegistryError).with.property('code', 'E_DECOMMISSIONED');
      expect((await s.seq.allocate('d1')).seq).to.equal(3);
    });

    it('records a command and reads it back (get, sealed, list newest first with filters), audited command.create; markSent sets sent_at', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await addDevice(s, 'd1');
      await addDevice(s, 'd2');
      const c1 = await sendCommand(s, 'd1', { fanoutId: 'fan-1', bindUser: 'bob', releaseSha256: 'ab'.repeat(32) });
      clock.advance(10);
      const c2 = await sendCommand(s, 'd1');
      clock.advance(10);
      const c3 = await sendCommand(s, 'd2', { fanoutId: 'fan-1' });
      const got = await s.commands.get(c1.jti);
      expect(got).to.deep.equal({
        jti: c1.jti,
        deviceId: 'd1',
        action: 'selftest',
        userId: 'alice',
        paramsDigest: c1.paramsDigest,
        seq: 1,
        encryptionKid: c1.encryptionKid,
        fanoutId: 'fan-1',
        createdAt: clock.t - 20,
        expiresAt: c1.expiresAt,
        sentAt: null,
        ackStatus: null,
        ackCode: null,
        ackDetail: null,
        ackJti: null,
        ackResult: null,
        ackedAt: null,
        voidedAt: null,
        bindUser: 'bob',
        releaseSha256: 'ab'.repeat(32),
      });
      expect(await s.commands.sealed(c2.jti)).to.equal(c2.sealed);
      expect(await s.commands.get('nope')).to.equal(undefined);
      expect(await s.commands.sealed('nope')).to.equal(undefined);
      expect((await s.commands.list()).map((c) => c.jti)).to.deep.equal([c3.jti, c2.jti, c1.jti]);
      expect((await s.commands.list({ deviceId: 'd1' })).map((c) => c.jti)).to.deep.equal([c2.jti, c1.jti]);
      expect((await s.commands.list({ fanoutId: 'fan-1' })).map((c) => c.jti)).to.deep.equal([c3.jti, c1.jti]);
      expect((await s.commands.list({ limit: 1 })).map((c) => c.jti)).to.deep.equal([c3.jti]);
      const created = (await s.audit.log()).filter((e) => e.event === 'command.create');
      expect(created.map((e) => e.detail)[0]).to.deep.equal({
        jti: c1.jti,
        action: 'selftest',
        seq: 1,
        user_id: 'alice',
        params_digest: c1.paramsDigest,
        fanout_id: 'fan-1',
      });
      expect(created).to.have.length(3);
      clock.advance(10);
      await s.commands.markSent(c1.jti);
      clock.advance(10);
      await s.commands.markSentMany([c2.jti, c3.jti]);
      expect((await s.commands.list()).map((c) => c.sentAt)).to.deep.equal([clock.t, clock.t, clock.t - 10]);
    });

    it('recordMany records each command on its own: one that cannot be (a seq taken) gets an Error, the others are recorded', async () => {
      const s = await b.open();
      await addDevice(s, 'd1');
      const taken = await sendCommand(s, 'd1');
      const make = (seq: number): NewCommand => ({ ...taken, jti: randomUUID(), seq, sealed: `x${seq}` });
      const out = await s.commands.recordMany([make(2), make(taken.seq), make(3)]);
      expect(out[0]).to.equal(true);
      expect(out[1]).to.be.instanceOf(Error);
      expect(out[2]).to.equal(true);
      expect((await s.commands.list({ deviceId: 'd1' })).map((c) => c.seq)).to.deep.equal([3, 2, 1]);
      expect((await s.audit.log()).filter((e) => e.event === 'command.create')).to.have.length(3);
      await rejectsAny(s.commands.record(make(taken.seq)));
      expect((await s.commands.list({ deviceId: 'd1' })).map((c) => c.seq)).to.deep.equal([3, 2, 1]);
    });

    it('records an ack once, audited; a repeat is a duplicate; an ack for another device or an unknown command is unknown-command', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await addDevice(s, 'd1');
      await addDevice(s, 'd2');
      const c = await sendCommand(s, 'd1');
      const a = ack(c, { status: 'failed', code: 'E_SELFTEST', detail: 'sensor missing', result: { report: { ok: false } } });
      expect(await s.commands.recordAck('d2', a, [])).to.deep.equal({ kind: 'unknown-command' });
      expect(await s.commands.recordAck('d1', ack({ ...c, jti: randomUUID() }), [])).to.deep.equal({ kind: 'unknown-command' });
      clock.advance(5);
      const out = await s.commands.recordAck('d1', a, []);
      expect(out.kind).to.equal('recorded');
      const recorded = await s.commands.get(c.jti);
      expect(out.kind === 'recorded' && out.command).to.deep.equal(recorded);
      expect(recorded).to.deep.include({
        ackStatus: 'failed',
        ackCode: 'E_SELFTEST',
        ackDetail: 'sensor missing',
        ackJti: a.jti,
        ackResult: { report: { ok: false } },
        ackedAt: clock.t,
      });
      const again = await s.commands.recordAck('d1', { ...a, jti: randomUUID() }, []);
      expect(again.kind).to.equal('duplicate');
      expect((await s.commands.get(c.jti))?.ackJti).to.equal(a.jti);
      const acks = (await s.audit.log({ deviceId: 'd1' })).filter((e) => e.event === 'command.ack');
      expect(acks.map((e) => e.detail)).to.deep.equal([{ jti: c.jti, action: 'selftest', seq: c.seq, status: 'failed', code: 'E_SELFTEST', ack_jti: a.jti }]);
    });

    it('an applied ack applies its effects in order: bind-user and provisioned (audited with the user)', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      await addDevice(s, 'd1', { userId: null, state: 'enrolling' });
      const c = await sendCommand(s, 'd1', { action: 'request', bindUser: 'carol' });
      clock.advance(7);
      await s.commands.recordAck('d1', ack(c), [
        { kind: 'bind-user', userId: 'carol' },
        { kind: 'provisioned', userId: 'carol' },
      ]);
      const d = await s.devices.require('d1');
      expect([d.userId, d.state, d.confirmedAt, d.updatedAt]).to.deep.equal(['carol', 'provisioned', clock.t, clock.t]);
      const last = (await s.audit.log({ deviceId: 'd1' })).slice(-2);
      expect(last.map((e) => [e.event, e.detail])).to.deep.equal([
        ['command.ack', { jti: c.jti, action: 'request', seq: c.seq, status: 'applied', code: 'OK', ack_jti: last[0]?.detail.ack_jti }],
        ['device.provisioned', { user_id: 'carol' }],
      ]);
    });

    it('effects are not applied for a refused ack, nor for a duplicate; provisioned leaves a decommissioned device decommissioned', async () => {
      const s = await b.open();
      await addDevice(s, 'd1', { userId: 'alice', state: 'enrolling' });
      const c = await sendCommand(s, 'd1', { action: 'request' });
      await s.commands.recordAck('d1', ack(c, { status: 'rejected', code: 'E_USER' }), [{ kind: 'bind-user', userId: 'mallory' }]);
      expect(await s.devices.require('d1')).to.deep.include({ userId: 'alice', state: 'enrolling' });
      const c2 = await sendCommand(s, 'd1', { action: 'request' });
      await s.commands.recordAck('d1', ack(c2), []);
      const dup = await s.commands.recordAck('d1', ack(c2), [{ kind: 'bind-user', userId: 'mallory' }]);
      expect(dup.kind).to.equal('duplicate');
      expect((await s.devices.require('d1')).userId).to.equal('alice');
      await addDevice(s, 'dead', { state: 'provisioned' });
      const del = await sendCommand(s, 'dead', { action: 'delete' });
      const late = await sendCommand(s, 'dead', { action: 'request' });
      await s.commands.recordAck('dead', ack(del), [{ kind: 'decommissioned' }]);
      await s.commands.recordAck('dead', ack(late), [{ kind: 'provisioned', userId: 'alice' }]);
      expect((await s.devices.require('dead')).state).to.equal('decommissioned');
    });

    it('keys-rotated makes the new keys current and audits device.rotate; upgraded records the version and the release arch', async () => {
      const s = await b.open();
      const old = await addDevice(s, 'd1');
      const next = await keyPair();
      const rot = await sendCommand(s, 'd1', { action: 'rotate' });
      await s.commands.recordAck('d1', ack(rot), [{ kind: 'keys-rotated', signing: next.signing, encryption: next.encryption }]);
      const d = await s.devices.require('d1');
      expect([d.signing?.kid, d.encryption?.kid]).to.deep.equal([next.signing.kid, next.encryption.kid]);
      expect(
        d.keys
          .filter((k) => k.status === 'previous')
          .map((k) => k.kid)
          .sort(),
      ).to.deep.equal([old.signing.kid, old.encryption.kid].sort());
      expect((await s.audit.log({ deviceId: 'd1' })).at(-1)?.detail).to.deep.equal({ signing_kid: next.signing.kid, encryption_kid: next.encryption.kid });
      expect((await s.audit.log({ deviceId: 'd1' })).at(-1)?.event).to.equal('device.rotate');

      const m = manifest('2.0.0', 'armv7');
      await s.releases.add(m, 'jws', '/tmp/r');
      const up = await sendCommand(s, 'd1', { action: 'upgrade', releaseSha256: m.artifact.sha256 });
      await s.commands.recordAck('d1', ack(up, { result: { version: '2.0.0' } }), [{ kind: 'upgraded', version: '2.0.0' }]);
      const u = await s.devices.require('d1');
      expect([u.agentVersion, u.arch]).to.deep.equal(['2.0.0', 'armv7']);
      const ev = (await s.audit.log({ deviceId: 'd1' })).at(-1);
      expect([ev?.event, ev?.detail]).to.deep.equal(['device.upgraded', { jti: up.jti, version: '2.0.0', arch: 'armv7' }]);
      // An unknown version keeps the recorded one; no release named: the arch stays.
      const up2 = await sendCommand(s, 'd1', { action: 'upgrade' });
      await s.commands.recordAck('d1', ack(up2), [{ kind: 'upgraded', version: null }]);
      expect(await s.devices.require('d1')).to.deep.include({ agentVersion: '2.0.0', arch: 'armv7' });
      expect((await s.audit.log({ deviceId: 'd1' })).at(-1)?.detail).to.deep.equal({ jti: up2.jti, version: null });
    });

    it('an applied ack after a recorded refusal is a contradiction: audited, the device flagged, the effects not applied', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      const old = await addDevice(s, 'd1');
      const c = await sendCommand(s, 'd1', { action: 'rotate' });
      const refused = ack(c, { status: 'rejected', code: 'E_EXPIRED' });
      await s.commands.recordAck('d1', refused, []);
      clock.advance(100);
      const next = await keyPair();
      const claimed = ack(c);
      const out = await s.commands.recordAck('d1', claimed, [{ kind: 'keys-rotated', signing: next.signing, encryption: next.encryption }]);
      expect(out.kind).to.equal('contradiction');
      expect(out.kind === 'contradiction' && out.command.ackStatus).to.equal('rejected');
      const detail = {
        jti: c.jti,
        action: 'rotate',
        seq: c.seq,
        recorded: { status: 'rejected', code: 'E_EXPIRED', ack_jti: refused.jti },
        claimed: { status: 'applied', code: 'OK', ack_jti: claimed.jti },
        claimed_keys: { signing_kid: next.signing.kid, encryption_kid: next.encryption.kid },
        effects: 'not applied',
      };
      const ev = (await s.audit.log({ deviceId: 'd1' })).at(-1);
      expect([ev?.event, ev?.detail]).to.deep.equal([ACK_CONTRADICTION_EVENT, detail]);
      const d = await s.devices.require('d1');
      expect(d.flag).to.deep.equal({ at: clock.t, event: ACK_CONTRADICTION_EVENT, detail });
      expect(d.encryption?.kid).to.equal(old.encryption.kid);
      expect((await s.commands.get(c.jti))?.ackStatus).to.equal('rejected');
      // A refusal after a refusal, or `rejected E_REPLAY` after applied, is only a duplicate.
      expect((await s.commands.recordAck('d1', ack(c, { status: 'failed', code: 'E_X' }), [])).kind).to.equal('duplicate');
      // device add --replace clears the flag.
      await s.devices.add({ id: 'd1', userId: 'alice', origin: 'jwks', signing: next.signing, encryption: next.encryption }, { replace: true });
      expect((await s.devices.require('d1')).flag).to.equal(null);
    });

    it('a rotate recorded applied: the same keys again (or none) are a duplicate, other keys a contradiction (no claimed_keys without the effect)', async () => {
      const s = await b.open();
      await addDevice(s, 'd1');
      const next = await keyPair();
      const other = await keyPair();
      const set = (k: typeof next) => ({ keys: { keys: [k.signing, k.encryption] } });
      const c = await sendCommand(s, 'd1', { action: 'rotate' });
      await s.commands.recordAck('d1', ack(c, { result: set(next) }), [{ kind: 'keys-rotated', signing: next.signing, encryption: next.encryption }]);
      expect((await s.commands.recordAck('d1', ack(c, { result: set(next) }), [])).kind).to.equal('duplicate');
      expect((await s.commands.recordAck('d1', ack(c), [])).kind).to.equal('duplicate');
      expect((await s.commands.recordAck('d1', ack(c, { status: 'rejected', code: 'E_REPLAY' }), [])).kind).to.equal('duplicate');
      expect((await s.devices.require('d1')).flag).to.equal(null);
      expect((await s.commands.recordAck('d1', ack(c, { result: set(other) }), [])).kind).to.equal('contradiction');
      const d = await s.devices.require('d1');
      expect(d.flag?.event).to.equal(ACK_CONTRADICTION_EVENT);
      expect(d.flag?.detail).to.not.have.property('claimed_keys');
      expect(d.encryption?.kid).to.equal(next.encryption.kid);
    });
  });
});
