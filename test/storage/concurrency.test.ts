/**
 * Shared storage suite: two storages on one registry (two "machines": two
 * SQLite connections to one file, or two pools on one PostgreSQL database)
 * racing on the decisions that must be made once: seq allocation, token use,
 * the engine lease, target claims. Same tests on SQLite and PostgreSQL.
 */
import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import type { Lease } from '../../server/storage/records.js';
import type { Storage } from '../../server/storage/types.js';
import { forEachBackend } from './backends.js';
import { ack, addDevice, keyPair, sendCommand, spec, type KeyPair } from './fixtures.js';

const enroll = (s: Storage, token: string, keys: KeyPair) =>
  s.enrollment.enroll({ deviceId: 'board-1', token, enrollmentJti: randomUUID(), signing: keys.signing, encryption: keys.encryption });

let shared: KeyPair | undefined;
const sharedKeys = async (): Promise<KeyPair> => (shared ??= await keyPair());

describe('storage: concurrency (two machines on one registry)', function () {
  this.timeout(60_000);
  forEachBackend((b) => {
    it('2 x 200 concurrent seq allocations on one device hand out 400 distinct seqs, 1..400', async () => {
      const one = await b.open();
      const two = await b.open();
      await addDevice(one, 'd1');
      const calls = [];
      for (let i = 0; i < 200; i++) calls.push(one.seq.allocate('d1'), two.seq.allocate('d1'));
      const seqs = (await Promise.all(calls)).map((r) => r.seq).sort((x, y) => x - y);
      expect(new Set(seqs).size).to.equal(400);
      expect([seqs[0], seqs[399]]).to.deep.equal([1, 400]);
      expect((await two.devices.require('d1')).nextSeq).to.equal(401);
    });

    it('one token, two concurrent enrollments with other keys: one wins, the other is E_TOKEN_USED; with the same keys, the other is a repeat', async () => {
      const one = await b.open();
      const two = await b.open();
      for (let round = 0; round < 3; round++) {
        const { token } = await one.enrollment.createToken('board-1', 'alice', 60_000);
        const [k1, k2] = await Promise.all([keyPair(), keyPair()]);
        const out = await Promise.allSettled([enroll(one, token, k1), enroll(two, token, k2)]);
        const won = out.findIndex((o) => o.status === 'fulfilled');
        expect(
          out.filter((o) => o.status === 'fulfilled'),
          'exactly one enrollment wins',
        ).to.have.length(1);
        expect((out[won] as PromiseFulfilledResult<{ repeated: boolean }>).value).to.deep.equal({ userId: 'alice', repeated: false });
        const lost = out[1 - won] as PromiseRejectedResult;
        expect((lost.reason as { code?: string }).code, String(lost.reason)).to.equal('E_TOKEN_USED');
        const winner = won === 0 ? k1 : k2;
        const d = await two.devices.require('board-1');
        expect([d.signing?.kid, d.encryption?.kid]).to.deep.equal([winner.signing.kid, winner.encryption.kid]);
        expect(d.keys.filter((k) => k.status === 'current')).to.have.length(2);
      }
      const { token } = await one.enrollment.createToken('board-1', 'bob', 60_000);
      const same = await keyPair();
      const both = await Promise.all([enroll(one, token, same), enroll(two, token, same)]);
      expect(both.map((r) => r.repeated).sort()).to.deep.equal([false, true]);
      expect(both.every((r) => r.userId === 'bob')).to.equal(true);
      expect((await one.audit.query({ deviceId: 'board-1', event: 'device.enroll' })).map((e) => e.event).filter((e) => e === 'device.enroll')).to.have.length(
        4,
      );
    });

    it('two holders racing for a lease: exactly one gets it (20 leases raced at once)', async () => {
      const one = await b.open();
      const two = await b.open();
      const names = Array.from({ length: 20 }, (_, i) => `lease-${i}`);
      const results = await Promise.all(names.map((n) => Promise.all([one.leases.take(n, 'A', 60_000), two.leases.take(n, 'B', 60_000)])));
      for (const [i, [a, bl]] of results.entries()) {
        const winners = [a, bl].filter((x): x is Lease => x !== undefined);
        expect(winners, names[i]).to.have.length(1);
        expect(winners[0]?.generation).to.equal(1);
        expect(await one.leases.holder(names[i] as string)).to.equal(winners[0]?.holder);
      }
    });

    it('the same applied ack recorded by both machines at once: recorded once, a duplicate once, its effects applied once', async () => {
      const one = await b.open();
      const two = await b.open();
      const ids = Array.from({ length: 10 }, (_, i) => `r${i}`);
      const old = await keyPair();
      const next = await keyPair();
      const commands = [];
      for (const id of ids) {
        await addDevice(one, id, { keys: old });
        commands.push(await sendCommand(one, id, { action: 'rotate' }));
      }
      const effects = [{ kind: 'keys-rotated' as const, signing: next.signing, encryption: next.encryption }];
      const outcomes = await Promise.all(
        commands.map((c) => {
          const a = ack(c);
          return Promise.all([one.commands.recordAck(c.deviceId, a, effects), two.commands.recordAck(c.deviceId, a, effects)]);
        }),
      );
      for (const [i, pair] of outcomes.entries()) {
        expect(pair.map((o) => o.kind).sort(), ids[i]).to.deep.equal(['duplicate', 'recorded']);
        const d = await two.devices.require(ids[i] as string);
        // Applied twice, the replaced keys would have gone from previous to retired.
        expect(Object.fromEntries(d.keys.map((k) => [k.kid, k.status]))).to.deep.equal({
          [old.signing.kid]: 'previous',
          [old.encryption.kid]: 'previous',
          [next.signing.kid]: 'current',
          [next.encryption.kid]: 'current',
        });
        expect(await one.audit.query({ deviceId: ids[i] as string, event: 'device.rotate' })).to.have.length(1);
        expect(await one.audit.query({ deviceId: ids[i] as string, event: 'command.ack' })).to.have.length(1);
      }
    });

    it('both machines marking claimed targets sent at once under the lease: every one sent, the lease still held', async () => {
      const one = await b.open();
      const two = await b.open();
      const ids = Array.from({ length: 60 }, (_, i) => `m${String(i).padStart(2, '0')}`);
      for (const id of ids) await addDevice(one, id, { keys: await sharedKeys() });
      const r = await one.rollouts.create(spec({ devices: ids }), ids);
      const lease = (await one.leases.take('rollouts', 'engine', 600_000)) as Lease;
      const sealed = [];
      for (const id of ids) {
        expect(await one.rollouts.claim(r.id, id, lease)).to.equal(true);
        sealed.push(await sendCommand(one, id, { fanoutId: r.id }));
      }
      const marks = await Promise.all(sealed.map((c, i) => (i % 2 === 0 ? one : two).rollouts.markSent(r.id, c.deviceId, c.jti, lease)));
      expect(marks.every((m) => m === 'sent')).to.equal(true);
      expect((await two.rollouts.counts(r.id)).sent).to.equal(60);
      expect(await two.leases.holder('rollouts')).to.equal('engine');
      expect(await one.rollouts.unansweredValid(r.id, one.now())).to.have.length(60);
    });

    it('2 x 300 concurrent claims of the same 100 targets: each target claimed exactly once', async () => {
      const one = await b.open();
      const two = await b.open();
      const ids = Array.from({ length: 100 }, (_, i) => `t${String(i).padStart(3, '0')}`);
      const r = await one.rollouts.create(spec({ devices: ids }), ids);
      const lease = (await one.leases.take('rollouts', 'engine', 600_000)) as Lease;
      const calls: Promise<boolean>[] = [];
      for (let round = 0; round < 3; round++) for (const id of ids) calls.push(one.rollouts.claim(r.id, id, lease), two.rollouts.claim(r.id, id, lease));
      const won = (await Promise.all(calls)).filter(Boolean).length;
      expect(won).to.equal(100);
      const targets = await two.rollouts.targets(r.id);
      expect(targets.every((t) => t.state === 'sending' && t.attempts === 1)).to.equal(true);
      expect(targets).to.have.length(100);
    });
  });
});
