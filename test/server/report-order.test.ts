/**
 * Report order (protocol/report.ts: run, conn, n) against `serve` on aedes with its rollout
 * engine: reports captured off the broker and published again (a replay) change nothing and
 * make the server publish nothing; a will sealed before its connection's commands does not
 * take back the reported last_seq or settings; legacy reports (no position) are taken only
 * from a device that never sent a position.
 */
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'chai';
import mqtt from 'mqtt';
import { commandTopic, reportTopic, toPublicJwk } from '../../protocol/index.js';
import { eventually, makeSimDevice, type SimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { sqliteDb } from '../helpers/sqlite-db.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const digest = (c: string): string => `sha256:${c.repeat(64)}`;

describe('server: report order (replays, late and stale wills)', function () {
  this.timeout(30_000);
  let f: Fixture;

  before(async () => {
    // A rate limit far above what these boards send: what is dropped here is dropped for its order.
    f = await startFixture({ http: { host: '127.0.0.1', port: 0 }, shared: 'off', reports: { rate: { burst: 1000 } } });
  });
  after(async () => {
    await f?.close();
  });

  async function device(id: string): Promise<SimDevice> {
    const d = f.fleet.add(await makeSimDevice(id));
    await f.server.data.storage.devices.add({
      id,
      userId: 'alice',
      origin: 'jwks',
      signing: toPublicJwk(d.signing),
      encryption: toPublicJwk(d.encryption),
      state: 'provisioned',
    });
    return d;
  }

  const handledFor = (id: string): number =>
    f.inbound.filter((r) => ((r.kind === 'report' || r.kind === 'report-deferred') && r.deviceId === id) || r.kind === 'dropped').length;
  /** Publishes sealed reports of `d` (as the board, its broker's will, or a replay) and waits until the server handled each. */
  async function publish(d: SimDevice, ...tokens: string[]): Promise<void> {
    const before = handledFor(d.id);
    for (const t of tokens) await f.fleet.publishRaw(reportTopic('provision', d.id), t);
    await eventually(() => handledFor(d.id) >= before + tokens.length, 10_000, `${tokens.length} report(s) of ${d.id} handled`);
  }
  const lastOutcomes = (id: string, k: number): string[] =>
    f.inbound
      .filter((r) => r.kind === 'report' && r.deviceId === id)
      .slice(-k)
      .map((r) => (r.kind === 'report' ? r.recorded : r.kind));
  /** The device's presence and report columns as stored. */
  const row = (id: string): Record<string, unknown> =>
    sqliteDb(f.server.data.storage)
      .prepare(
        'SELECT presence, last_seen_at, presence_session, presence_conn, report_run, report_n, report_interval_s, reported, reported_at, last_report_jti FROM devices WHERE id = ?',
      )
      .get(id) as Record<string, unknown>;
  const reported = (id: string): { last_seq: number; settings_digest: string; reason: string } =>
    JSON.parse(row(id).reported as string) as { last_seq: number; settings_digest: string; reason: string };
  /** A restart of the agent: the next run, a new session, connections counted from 1 again. */
  const restart = (d: SimDevice): void => {
    d.run += 1;
    d.session = randomUUID();
    d.conn = 0;
  };

  it('a captured connect report and its will, replayed after the board connected again, mark nothing offline', async () => {
    const d = await device('order-1');
    d.conn = 1;
    const connect1 = await f.fleet.sealReport(d, 'connect');
    const will1 = await f.fleet.sealReport(d, 'offline');
    await publish(d, connect1, will1); // the board's first run, then its connection died: the broker published the will
    expect(row(d.id).presence).to.equal('offline');
    restart(d);
    await publish(d, await f.fleet.sealReport(d, 'connect'));
    const live = row(d.id);
    expect(live.presence).to.equal('online');

    await sleep(5);
    await publish(d, connect1, will1);
    expect(lastOutcomes(d.id, 2)).to.deep.equal(['stale', 'stale']);
    expect(row(d.id)).to.deep.equal(live);
  });

  it('a replayed old report takes back neither the settings, nor last_seq, nor last-seen', async () => {
    const d = await device('order-2');
    await publish(d, await f.fleet.sealReport(d, 'connect'));
    d.lastSeq = 1;
    const old = await f.fleet.sealReport(d, 'interval', { settingsDigest: digest('a') });
    await publish(d, old);
    d.lastSeq = 3; // two updates applied since
    await publish(d, await f.fleet.sealReport(d, 'interval', { settingsDigest: digest('b') }));
    const live = row(d.id);
    expect(reported(d.id)).to.include({ last_seq: 3, settings_digest: digest('b') });

    await sleep(5); // a report recorded now would move last-seen
    await publish(d, old);
    expect(lastOutcomes(d.id, 1)).to.deep.equal(['stale']);
    expect(row(d.id)).to.deep.equal(live);
  });

  it('40 replayed connect reports make the server publish nothing to the board', async () => {
    const d = await device('order-3');
    d.behaviour = 'silent'; // it never answers: its rollout command stays sent, unanswered
    // 40 reconnects (a flaky link): the connect reports an attacker on the broker captures.
    const captured: string[] = [];
    for (let i = 0; i < 40; i++) {
      d.conn += 1;
      d.n = 0;
      captured.push(await f.fleet.sealReport(d, 'connect'));
    }
    await publish(d, ...captured);
    expect(row(d.id).presence).to.equal('online');

    // A rollout sends it a command with a 1 s lifetime; it expires unanswered.
    const token = (await readFile(join(f.dataDir, 'http.token'), 'utf8')).trim();
    const res = await fetch(`http://127.0.0.1:${f.server.http?.port}/rollouts`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ action: 'selftest', selector: { devices: [d.id] }, ttl_s: 1 }),
    });
    expect(res.status).to.equal(201);
    f.server.rollouts?.kick();
    const storage = f.server.data.storage;
    const sent = await eventually(
      async () => (await storage.commands.list({ deviceId: d.id, limit: 5 })).find((c) => c.sentAt !== null),
      10_000,
      'the rollout command sent',
    );
    await eventually(() => storage.now() > sent.expiresAt + 50 && d.received.length === 1, 10_000, 'the command expired, delivered once');

    const counter = await mqtt.connectAsync(f.broker.url, { clientId: `count-${d.id}`, clean: true, reconnectPeriod: 0 });
    let publishes = 0;
    counter.on('message', () => (publishes += 1));
    await counter.subscribeAsync(commandTopic('provision', d.id), { qos: 1 });
    try {
      await publish(d, ...captured);
      await f.server.rollouts?.idle();
      await sleep(300); // what the engine published has reached the counter
      expect(publishes).to.equal(0);
      const outcomes = lastOutcomes(d.id, 40);
      expect(outcomes.filter((o) => o === 'stale')).to.have.length(39);
      expect(outcomes.at(-1)).to.equal('duplicate'); // the newest one is the very report recorded
    } finally {
      await counter.endAsync();
    }
  });

  it('a will sealed ahead, before its connection applied an update, takes back neither last_seq nor the settings', async () => {
    const d = await device('order-4');
    await publish(d, await f.fleet.sealReport(d, 'connect'));
    // The run before seals the next run's first will: last_seq 1, settings A.
    restart(d);
    d.lastSeq = 1;
    const sealedAhead = await f.fleet.sealReport(d, 'offline', { settingsDigest: digest('a') });
    d.conn = 1;
    await publish(d, await f.fleet.sealReport(d, 'connect', { settingsDigest: digest('a') }));
    // An update applied on that connection: its report says last_seq 2, settings B.
    d.lastSeq = 2;
    await publish(d, await f.fleet.sealReport(d, 'interval', { settingsDigest: digest('b') }));
    // The connection dies: the broker publishes the will sealed ahead.
    await publish(d, sealedAhead);
    expect(lastOutcomes(d.id, 1)).to.deep.equal(['recorded']);
    expect(row(d.id).presence).to.equal('offline');
    expect(reported(d.id)).to.include({ reason: 'offline', last_seq: 2, settings_digest: digest('b') });
  });

  it('a board enrolled again with new keys counts its runs from 1 again: taken; a report of its old keys is not', async () => {
    const d = await device('order-6');
    d.run = 7;
    const oldKeys = { signing: d.signing, encryption: d.encryption };
    await publish(d, await f.fleet.sealReport(d, 'connect'));
    const oldReport = await f.fleet.sealReport(d, 'interval');
    // Its state was lost: new keys, a fresh state (run 0), a new enrollment.
    const fresh = await makeSimDevice(d.id);
    Object.assign(d, { signing: fresh.signing, encryption: fresh.encryption, run: 1, conn: 0, session: randomUUID() });
    const { token } = await f.server.data.storage.enrollment.createToken(d.id, 'alice', 600_000);
    await f.fleet.enroll(d, token);
    await eventually(async () => (await f.server.data.storage.devices.require(d.id)).signing?.kid === d.signing.kid, 10_000, 'the new keys registered');
    await publish(d, await f.fleet.sealReport(d, 'connect'));
    expect(lastOutcomes(d.id, 1)).to.deep.equal(['recorded']);
    expect(row(d.id)).to.include({ presence: 'online', report_run: 1 });
    const live = row(d.id);
    expect(oldKeys.signing.kid).to.not.equal(d.signing.kid);
    await publish(d, oldReport); // signed with the old key, still in its grace period for acks
    expect(f.inbound.at(-1)).to.include({ kind: 'dropped', code: 'E_SIGNATURE' });
    expect(row(d.id)).to.deep.equal(live);
  });

  it('legacy reports (no position): taken from a device that never sent one, last_seq never back; dropped once it has', async () => {
    const d = await device('order-5');
    d.conn = 1;
    d.lastSeq = 4;
    await publish(d, await f.fleet.sealReport(d, 'connect', { legacy: true, settingsDigest: digest('c') }));
    expect(row(d.id)).to.include({ presence: 'online', report_run: null });
    d.lastSeq = 2;
    await publish(d, await f.fleet.sealReport(d, 'interval', { legacy: true, settingsDigest: digest('d') }));
    expect(lastOutcomes(d.id, 1)).to.deep.equal(['recorded']);
    expect(reported(d.id)).to.include({ last_seq: 4, settings_digest: digest('c') });
    // The agent is upgraded: a report with a position; from then on a legacy one is a replay.
    restart(d);
    d.lastSeq = 5;
    await publish(d, await f.fleet.sealReport(d, 'connect'));
    const live = row(d.id);
    await publish(d, await f.fleet.sealReport(d, 'offline', { legacy: true }));
    expect(lastOutcomes(d.id, 1)).to.deep.equal(['stale']);
    expect(row(d.id)).to.deep.equal(live);
    expect(f.server.reportDrops.stale).to.be.greaterThan(0);
  });
});
