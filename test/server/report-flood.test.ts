/**
 * Reports cannot starve acks, over mosquitto with production's per-session queue limit
 * (max_queued_messages 200, provisioning/mosquitto/sensor-broker.conf): while `serve` is away
 * (its sessions persistent), board A floods valid signed reports and board B acknowledges a
 * command; back, `serve` records B's ack (reports queue in a session of their own, acks in
 * theirs). Then, connected, A's flood is cut by the per-device rate limit before opening:
 * counted, and summarised in one log line per interval, not one per report.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { reportTopic, toPublicJwk, type JwkSet } from '../../protocol/index.js';
import { initDataDir } from '../../server/data-dir.js';
import { startProvisionServer, type RunningServer } from '../../server/service.js';
import { bufferedLogger } from '../../lib/log.js';
import { mosquittoAvailable, startMosquittoProcess, type MosquittoProcess } from '../helpers/mosquitto-process.js';
import { NO_MOSQUITTO, skipBecause } from '../helpers/skip.js';
import { SimFleet, eventually, makeSimDevice } from './sim-fleet.js';

describe('server: a board flooding valid reports never makes the broker drop another board’s ack (mosquitto, 200 queued)', function () {
  this.timeout(60_000);
  let broker: MosquittoProcess | undefined;
  let dir: string | undefined;
  let fleet: SimFleet | undefined;
  let server: RunningServer | undefined;

  before(function () {
    if (!mosquittoAvailable()) skipBecause(this, NO_MOSQUITTO);
  });
  after(async () => {
    await server?.close().catch(() => undefined);
    await fleet?.close().catch(() => undefined);
    await broker?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('B’s ack sent while serve was away behind 300 reports of A is recorded; connected, A’s flood is rate-limited before opening', async () => {
    broker = await startMosquittoProcess({ persistence: true, maxQueuedMessages: 200 });
    dir = await mkdtemp(join(tmpdir(), 'report-flood-'));
    const data = join(dir, 'data');
    await initDataDir(data, { broker: { url: broker.url } });
    const trust = JSON.parse(await readFile(join(data, 'keys', 'trust.jwks'), 'utf8')) as JwkSet;
    const logs = bufferedLogger('debug');
    const serve = (): Promise<RunningServer> =>
      startProvisionServer({ dataDir: data, shared: 'on', clientId: 'flood-test-server', log: logs.logger, reports: { summaryMs: 500 } });
    server = await serve();
    fleet = await SimFleet.connect(broker.url, { trust });
    const a = fleet.add(await makeSimDevice('flood-a'));
    const b = fleet.add(await makeSimDevice('flood-b'));
    const c = fleet.add(await makeSimDevice('flood-c'));
    for (const d of [a, b, c]) {
      await server.data.storage.devices.add({
        id: d.id,
        userId: 'alice',
        origin: 'jwks',
        signing: toPublicJwk(d.signing),
        encryption: toPublicJwk(d.encryption),
        state: 'provisioned',
      });
    }
    // B is away: the command waits for it in the broker.
    b.online = false;
    const command = await server.send({ deviceId: b.id, action: 'selftest' });
    await eventually(() => b.queued.length === 1, 10_000, 'the command queued for B');

    // serve goes away (a restart, a stall): its sessions stay, their queues fill.
    await server.close();
    server = undefined;
    const flood: string[] = [];
    for (let i = 0; i < 300; i++) flood.push(await fleet.sealReport(a, 'interval'));
    for (const t of flood) await fleet.publishRaw(reportTopic('provision', a.id), t);
    // B is back: applies the command and acks it, behind A's 300 reports.
    await fleet.connectDevice(b);
    expect(b.applied.map((c) => c.jti)).to.deep.equal([command.jti]);

    server = await serve();
    const acked = await server.waitForAck(command.jti, 10_000);
    expect(acked?.ackStatus, 'B’s ack recorded').to.equal('applied');

    // Connected: 100 valid reports of C at once. At most the burst (20) of them is opened.
    const opened = (): number => logs.lines.filter((l) => /report\.(recorded|stale|duplicate)/.test(l) && l.includes('device=flood-c')).length;
    const limitedBefore = server.reportDrops.rateLimited;
    const more: string[] = [];
    for (let i = 0; i < 100; i++) more.push(await fleet.sealReport(c, 'interval'));
    for (const t of more) await fleet.publishRaw(reportTopic('provision', c.id), t);
    const s = server;
    await eventually(() => opened() >= 20, 10_000, 'the burst of C’s reports opened');
    await s.reportClient.publishAsync('provision/_server/settle', 'x', { qos: 1 }); // C's 100 reports have reached serve
    await eventually(() => s.reportDrops.rateLimited - limitedBefore + opened() >= 100, 10_000, 'C’s 100 reports handled');
    expect(opened()).to.be.at.most(21);
    expect(s.reportDrops.rateLimited - limitedBefore).to.be.at.least(79);
    // One summary line per interval, not one line per dropped report.
    await eventually(() => logs.lines.some((l) => /WARN report\.drops .*rate_limited=\d+/.test(l)), 5000, 'the drop summary');
    expect(logs.lines.filter((l) => l.includes('report.drops')).length).to.be.below(10);
  });
});
