/**
 * A rollout to 1,000 simulated boards over a real broker (aedes in process),
 * driven by `serve`'s engine: 30% of the boards are offline when it starts
 * (their signed offline reports say so) and come back while it runs, a few
 * only after the delivery deadline; some boards fail. Then a second rollout
 * whose injected failures trip its abort rule.
 */
import { expect } from 'chai';
import { toPublicJwk } from '../../protocol/index.js';
import { presenceOf } from '../../server/core/presence.js';
import { planRollout, startRollout } from '../../server/rollouts/plan.js';
import { eventually, makeSimDevice, type SimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const BOARDS = 1000;
const RATE_PER_MIN = 6000;

describe('server: a rollout to 1,000 simulated boards, 30% offline, with failures and an abort', function () {
  this.timeout(240_000);
  let f: Fixture;
  const devices: SimDevice[] = [];

  before(async () => {
    f = await startFixture();
    const storage = f.server.data.storage;
    for (let i = 0; i < BOARDS; i += 100) {
      devices.push(...(await Promise.all(Array.from({ length: 100 }, (_, j) => makeSimDevice(`rb-${String(i + j).padStart(4, '0')}`)))));
    }
    for (const [i, d] of devices.entries()) {
      f.fleet.add(d);
      await storage.devices.add({
        id: d.id,
        userId: 'fleet',
        origin: 'jwks',
        signing: toPublicJwk(d.signing),
        encryption: toPublicJwk(d.encryption),
        state: 'provisioned',
      });
      await storage.devices.addTags(d.id, ['site-a', ...(i < 200 ? ['canary'] : [])]);
    }
    // Every board reports in; the offline 30% then stop (their signed offline report for that connection).
    for (let i = 0; i < BOARDS; i += 50) await Promise.all(devices.slice(i, i + 50).map((d) => f.fleet.connectDevice(d, { intervalSeconds: 600 })));
    const offline = devices.filter((_, i) => i % 10 < 3);
    await Promise.all(offline.map((d) => f.fleet.disconnectDevice(d)));
    await eventually(
      async () => {
        const now = Date.now();
        const p = (await storage.devices.list({ tag: 'site-a' })).map((d) => presenceOf(d.presence, now));
        return p.filter((x) => x === 'online').length === 700 && p.filter((x) => x === 'offline').length === 300;
      },
      30_000,
      '700 boards online and 300 offline by their reports',
    );
  });

  after(async () => {
    await f?.close();
  });

  it('serves the online boards at the rate, the returning ones when they report in, nothing after the deadline, nothing twice', async () => {
    const storage = f.server.data.storage;
    const failing = new Set(devices.filter((_, i) => i % 33 === 5).map((d) => d.id));
    for (const d of devices) d.behaviour = failing.has(d.id) ? 'fail' : 'apply';
    const offline = devices.filter((_, i) => i % 10 < 3);
    // 20 of the offline boards come back only after the deadline.
    const late = new Set(offline.filter((_, i) => i % 15 === 0).map((d) => d.id));
    const returning = offline.filter((d) => !late.has(d.id));
    expect(late.size).to.equal(20);

    const plan = await planRollout(storage, f.server.data.keys, {
      action: 'update',
      params: { sensor: { sample_interval_s: 45 } },
      selector: { tag: 'site-a' },
      ratePerMin: RATE_PER_MIN,
      deliverWithinMs: 25_000,
      ttlSeconds: 10,
      concurrency: 64,
    });
    expect(plan.summary.offline).to.equal(300);
    const r = await startRollout(storage, plan);
    f.server.rollouts?.kick();

    // The returning boards come back over 8 s, from 3 s in.
    await sleep(3000);
    const backAt = new Map<string, number>();
    for (let i = 0; i < returning.length; i += 35) {
      for (const d of returning.slice(i, i + 35)) backAt.set(d.id, Date.now());
      await Promise.all(returning.slice(i, i + 35).map((d) => f.fleet.connectDevice(d, { intervalSeconds: 600 })));
      await sleep(1000);
    }
    const expectedDone = BOARDS - late.size;
    await eventually(
      async () => {
        const c = await storage.rollouts.counts(r.id);
        return c.applied + c.failed === expectedDone;
      },
      40_000,
      'every board online or back before the deadline answered',
    );
    const lastReturnedServed = Math.max(...returning.map((d) => (d.received[0]?.at ?? Number.POSITIVE_INFINITY) - (backAt.get(d.id) ?? 0)));

    // After the deadline the late boards come back: they get nothing, their targets expire.
    await eventually(async () => (await storage.rollouts.require(r.id)).finishedAt !== null, 30_000, 'the rollout finished at its deadline');
    for (const d of devices.filter((x) => late.has(x.id))) await f.fleet.connectDevice(d);
    await sleep(1000);
    const final = await storage.rollouts.require(r.id);
    const counts = await storage.rollouts.counts(r.id);
    expect(final.state).to.equal('completed');
    expect(counts).to.include({
      applied: expectedDone - (failing.size - [...failing].filter((id) => late.has(id)).length),
      expired: late.size,
      pending: 0,
      sent: 0,
    });
    expect(counts.failed).to.equal([...failing].filter((id) => !late.has(id)).length);
    for (const d of devices) {
      expect(d.applied.length, `${d.id} applied at most once`).to.be.at.most(1);
      if (late.has(d.id)) expect(d.received, `${d.id} came back after the deadline`).to.have.length(0);
      else expect(d.received.length, `${d.id} got its command once`).to.equal(1);
    }
    const commands = await storage.commands.list({ fanoutId: r.id, limit: 10_000 });
    expect(commands).to.have.length(expectedDone);
    for (const c of commands) {
      expect(c.createdAt).to.be.below(final.deadlineAt);
      expect(c.expiresAt).to.be.at.most(final.deadlineAt);
    }
    // The rate: in any second at most one second's worth plus the bucket (one rate step).
    const times = commands.map((c) => c.createdAt).sort((a, b) => a - b);
    const step = RATE_PER_MIN / 60;
    let worst = 0;
    for (let i = 0, j = 0; i < times.length; i++) {
      while ((times[i] as number) - (times[j] as number) >= 1000) j++;
      worst = Math.max(worst, i - j + 1);
    }
    expect(worst).to.be.at.most(2 * step);
    process.stderr.write(
      `      ${BOARDS} boards: ${counts.applied} applied, ${counts.failed} failed, ${counts.expired} expired (came back after the deadline); busiest second ${worst} commands (rate ${step}/s); last returning board served ${lastReturnedServed} ms after it reported in\n`,
    );
    expect(lastReturnedServed).to.be.below(5000);
  });

  it('an abort rule trips on injected failures and stops new sends within one rate step', async () => {
    const storage = f.server.data.storage;
    const canary = devices.slice(0, 200);
    for (const [i, d] of canary.entries()) {
      d.behaviour = i % 4 === 1 ? 'fail' : i % 4 === 3 && i % 8 === 7 ? 'reject' : 'apply';
      if (!d.online) await f.fleet.connectDevice(d);
    }
    const appliedBefore = new Map(canary.map((d) => [d.id, d.applied.length]));
    const rate = 600;
    const r = await startRollout(
      storage,
      await planRollout(storage, f.server.data.keys, {
        action: 'selftest',
        selector: { tag: 'canary' },
        ratePerMin: rate,
        abortPercent: 10,
        abortMin: 20,
        concurrency: 64,
      }),
    );
    f.server.rollouts?.kick();
    await eventually(async () => (await storage.rollouts.require(r.id)).state === 'aborted', 30_000, 'the rollout aborted');
    await eventually(async () => (await storage.rollouts.counts(r.id)).sent === 0, 15_000, 'the commands in flight answered');
    const commands = await storage.commands.list({ fanoutId: r.id, limit: 1000 });
    // When the rule first held, by the acks' record times.
    const acked = commands.filter((c) => c.ackedAt !== null).sort((a, b) => (a.ackedAt as number) - (b.ackedAt as number));
    let bad = 0;
    let results = 0;
    let trippedAt: number | undefined;
    for (const c of acked) {
      results++;
      if (c.ackStatus !== 'applied') bad++;
      if (results >= 20 && bad * 100 >= 10 * results) {
        trippedAt = c.ackedAt as number;
        break;
      }
    }
    expect(trippedAt).to.be.a('number');
    const after = commands.filter((c) => c.createdAt > (trippedAt as number)).length;
    const counts = await storage.rollouts.counts(r.id);
    process.stderr.write(
      `      abort at 10% after 20 results: ${commands.length} of 200 sent, ${after} sealed after the rule held (one rate step = ${rate / 60}), ${counts.cancelled} cancelled\n`,
    );
    expect(after).to.be.at.most(rate / 60);
    expect(counts.cancelled).to.equal(200 - commands.length);
    expect(counts.cancelled).to.be.above(100);
    for (const d of canary) expect(d.applied.length - (appliedBefore.get(d.id) ?? 0), `${d.id} applied at most once`).to.be.at.most(1);
    // Nothing more is sent once aborted.
    await sleep(1000);
    expect(await storage.commands.list({ fanoutId: r.id, limit: 1000 })).to.have.length(commands.length);
  });

  it('a board that vanished without a word gets its command when back: the stale one refused E_EXPIRED, a fresh one applied once', async () => {
    const storage = f.server.data.storage;
    const d = devices[999] as SimDevice;
    d.behaviour = 'apply';
    d.maxSkewSeconds = 0;
    if (!d.online) await f.fleet.connectDevice(d);
    await sleep(300);
    // Gone without an offline report (power cut; no will yet): the server still counts it online and sends.
    await f.fleet.disconnectDevice(d, { clean: false });
    const appliedBefore = d.applied.length;
    const r = await startRollout(
      storage,
      await planRollout(storage, f.server.data.keys, { action: 'selftest', selector: { devices: [d.id] }, ttlSeconds: 2, deliverWithinMs: 60_000 }),
    );
    f.server.rollouts?.kick();
    await eventually(async () => (await storage.rollouts.counts(r.id)).sent === 1, 10_000, 'the command sent while the board is away');
    // Whole seconds: exp (iat + 2, iat rounded down) is behind the board's clock for sure after 3.5 s.
    await sleep(3500);
    await f.fleet.connectDevice(d);
    await eventually(async () => (await storage.rollouts.require(r.id)).finishedAt !== null, 15_000, 'the rollout finished');
    const commands = (await storage.commands.list({ fanoutId: r.id })).sort((a, b) => a.seq - b.seq);
    expect(commands.map((c) => [c.ackStatus, c.ackCode])).to.deep.equal([
      ['rejected', 'E_EXPIRED'],
      ['applied', 'OK'],
    ]);
    expect(await storage.rollouts.counts(r.id)).to.include({ applied: 1, pending: 0, sent: 0 });
    expect((await storage.rollouts.targets(r.id))[0]).to.include({ state: 'applied', attempts: 2 });
    expect(d.applied.length - appliedBefore).to.equal(1);
  });
});
