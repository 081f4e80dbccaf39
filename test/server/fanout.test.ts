import { expect } from 'chai';
import { runFanout } from '../../server/fanout.js';
import { openSendSession as openSendClient } from '../../server/core/send-session.js';
import { toPublicJwk } from '../../protocol/index.js';
import { makeSimDevice, type SimBehaviour } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';

describe('server: fan-out to 200 simulated devices', function () {
  this.timeout(60_000);
  let f: Fixture;
  before(async () => {
    f = await startFixture();
  });
  after(async () => {
    await f.close();
  });

  it('completes with a correct summary, and a resume skips what was answered and re-publishes the rest unchanged', async () => {
    const storage = f.server.data.storage;
    const behaviourOf = (i: number): SimBehaviour => (i % 50 === 1 ? 'reject' : i % 50 === 2 ? 'fail' : i % 67 === 3 ? 'silent' : 'apply');
    const devices = await Promise.all(
      Array.from({ length: 200 }, async (_, i) => {
        const d = f.fleet.add(await makeSimDevice(`fan-${String(i).padStart(3, '0')}`, behaviourOf(i)));
        await storage.devices.add({
          id: d.id,
          userId: i % 2 ? 'alice' : 'bob',
          origin: 'jwks',
          signing: toPublicJwk(d.signing),
          encryption: toPublicJwk(d.encryption),
          state: 'provisioned',
        });
        return d;
      }),
    );
    // One decommissioned device is never selected.
    await storage.devices.add({ id: 'fan-gone', userId: 'bob', origin: 'jwks', encryption: toPublicJwk(devices[0]!.encryption), state: 'decommissioned' });
    const expected = { reject: 0, fail: 0, silent: 0 };
    for (let i = 0; i < 200; i++) {
      const b = behaviourOf(i);
      if (b !== 'apply') expected[b]++;
    }

    const client = await openSendClient(f.server.data, f.server.broker, { acksOf: 'all' });
    try {
      const progress: number[] = [];
      const first = await runFanout({
        storage,
        sender: client.sender,
        waiters: client.waiters,
        create: { action: 'update', params: { sensor: { sample_interval_s: 60 } }, selector: { all: true } },
        timeoutMs: 2000,
        onProgress: (done) => progress.push(done),
      });
      expect(first.total).to.equal(200);
      expect(first.counts).to.deep.equal({
        applied: 200 - expected.reject - expected.fail - expected.silent,
        rejected: expected.reject,
        failed: expected.fail,
        rolled_back: 0,
        'no answer': expected.silent,
        'not sent': 0,
      });
      expect(progress.at(-1)).to.equal(200);
      // Every device got exactly one command, each with its own seq 1.
      const cmds = await storage.commands.list({ fanoutId: first.fanoutId, limit: 1000 });
      expect(cmds).to.have.length(200);
      expect(new Set(cmds.map((c) => c.deviceId)).size).to.equal(200);
      expect(cmds.every((c) => c.seq === 1)).to.equal(true);
      const silentJtis = new Map(cmds.filter((c) => c.ackStatus === null).map((c) => [c.deviceId, c.jti]));

      // The silent devices come back; the resume answers them without sealing anything new.
      for (const d of devices) if (d.behaviour === 'silent') d.behaviour = 'apply';
      const appliedBefore = devices.reduce((n, d) => n + d.applied.length, 0);
      const resumed = await runFanout({ storage, sender: client.sender, waiters: client.waiters, resumeId: first.fanoutId, timeoutMs: 5000 });
      expect(resumed.fanoutId).to.equal(first.fanoutId);
      expect(resumed.skipped).to.equal(200 - expected.silent);
      expect(resumed.counts.applied).to.equal(first.counts.applied + expected.silent);
      expect(resumed.counts['no answer']).to.equal(0);
      expect(await storage.commands.list({ fanoutId: first.fanoutId, limit: 1000 })).to.have.length(200);
      for (const [id, jti] of silentJtis) expect((await storage.commands.get(jti))?.ackStatus, id).to.equal('applied');
      expect(devices.reduce((n, d) => n + d.applied.length, 0)).to.equal(appliedBefore + expected.silent);

      // A fan-out by user selects only that user's devices.
      const alice = await runFanout({
        storage,
        sender: client.sender,
        waiters: client.waiters,
        create: { action: 'selftest', params: {}, selector: { userId: 'alice' } },
        timeoutMs: 3000,
      });
      expect(alice.total).to.equal(100);
      expect(alice.rows.every((r) => Number(r.deviceId.slice(4)) % 2 === 1)).to.equal(true);
    } finally {
      await client.close();
    }
  });
});
