/**
 * Reports from the bundled agent (build/host/sensor-agent.mjs, as on a board), opened with
 * `openReport` and the server's keys: `connect` after each subscription (conn 1, then 2 after the
 * broker drops the connection), `interval` at the minimum interval, the state claims (last_seq,
 * kids, selftest), `offline` at SIGTERM, and with mosquitto the last will at SIGKILL, including
 * a restarted agent's first will sealed ahead by the run before (next-will.json).
 */
import { expect } from 'chai';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { KeyRing, MIN_REPORT_INTERVAL_SECONDS, openReport, reportTopic, toPublicJwk, type ReportClaims } from '../../protocol/index.js';
import { KeyStore } from '../../agent/store/keystore.js';
import { TEST_TIME_SCALE_ENV } from '../../agent/commands/run.js';
import { spawnAgent, TestSender, type AgentProcess } from '../helpers/agent-process.js';
import { shouldRunMosquitto, startAedes, startMosquitto } from '../helpers/brokers.js';
import { makeParty, type Party } from '../helpers/keys.js';
import { NO_MOSQUITTO, skipBecause } from '../helpers/skip.js';
import { NEXT_WILL_FILE } from '../../agent/net/reporter.js';
import { exists, makeDevice, PREFIX, removeDir, SERVER_ID, waitFor, type DeviceFiles } from './agent-fixture.js';

/** Subscribes to one device's report topic and opens every report with the server's keys. */
class ReportListener {
  readonly reports: ReportClaims[] = [];
  readonly bad: string[] = [];
  #client!: MqttClient;
  #waiters: { match: (r: ReportClaims) => boolean; resolve: (r: ReportClaims) => void }[] = [];

  async connect(url: string, deviceId: string, server: Party, device: DeviceKeys): Promise<void> {
    const decryption = await KeyRing.create([server.encryption]);
    const verification = await KeyRing.create([device.signing]);
    this.#client = await mqtt.connectAsync(url, {
      clientId: `reports-${Math.random().toString(16).slice(2, 8)}`,
      // A persistent session: what is published while a broker restart keeps this client away is queued for it.
      clean: false,
      protocolVersion: 4,
      reconnectPeriod: 200,
    });
    this.#client.on('message', (_t, payload) => {
      openReport(payload, { serverId: SERVER_ID, deviceId, decryption, verification }).then(
        ({ claims }) => {
          this.reports.push(claims);
          this.#waiters = this.#waiters.filter((w) => (w.match(claims) ? (w.resolve(claims), false) : true));
        },
        (err: unknown) => this.bad.push(String(err)),
      );
    });
    await this.#client.subscribeAsync(reportTopic(PREFIX, deviceId), { qos: 1 });
  }

  wait(match: (r: ReportClaims) => boolean, timeoutMs: number, what: string): Promise<ReportClaims> {
    const have = this.reports.find(match);
    if (have) return Promise.resolve(have);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no ${what} report within ${timeoutMs} ms (got ${this.reports.map((r) => `${r.reason}/${r.conn}`).join(', ')})`)),
        timeoutMs,
      );
      this.#waiters.push({
        match,
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
      });
    });
  }

  async close(): Promise<void> {
    await this.#client?.endAsync(true).catch(() => undefined);
  }
}

interface DeviceKeys {
  signing: ReturnType<typeof toPublicJwk>;
  encryption: ReturnType<typeof toPublicJwk>;
}

async function deviceKeys(files: DeviceFiles): Promise<DeviceKeys> {
  const ks = await KeyStore.open(files.keystore);
  return { signing: toPublicJwk(ks.signingKey!), encryption: toPublicJwk(ks.encryptionKey!) };
}

describe('agent reports (bundled agent, real broker)', function () {
  this.timeout(40_000);
  let server: Party;
  const cleanups: (() => Promise<unknown>)[] = [];

  before(async () => {
    server = await makeParty();
  });

  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  });

  async function setUp(url: string, deviceId: string): Promise<{ files: DeviceFiles; keys: DeviceKeys; reports: ReportListener }> {
    const files = await makeDevice({ deviceId, brokerUrl: url, server, keys: true, extra: { report_interval_s: MIN_REPORT_INTERVAL_SECONDS } });
    cleanups.push(() => removeDir(files.dir));
    const keys = await deviceKeys(files);
    const reports = new ReportListener();
    await reports.connect(url, deviceId, server, keys);
    cleanups.push(() => reports.close());
    return { files, keys, reports };
  }

  function start(files: DeviceFiles): AgentProcess {
    const agent = spawnAgent(files.configPath, { [TEST_TIME_SCALE_ENV]: '0.1' });
    cleanups.push(async () => {
      if (agent.running()) agent.child.kill('SIGKILL');
      await agent.exited;
    });
    return agent;
  }

  it('aedes: connect (conn 1, 2 after a drop), interval, state claims, offline at SIGTERM', async () => {
    const broker = await startAedes();
    cleanups.push(() => broker.stop());
    const deviceId = 'report-board-1';
    const { files, keys, reports } = await setUp(broker.url, deviceId);
    const agent = start(files);

    const c1 = await reports.wait((r) => r.reason === 'connect' && r.conn === 1, 10_000, 'first connect');
    expect(c1.iss).to.equal(deviceId);
    expect(c1.interval_s).to.equal(MIN_REPORT_INTERVAL_SECONDS);
    expect(c1.kids).to.deep.equal({ sig: keys.signing.kid, enc: keys.encryption.kid });
    expect(c1.node_version).to.equal(process.version);
    expect(c1.agent_version).to.match(/^\d+\.\d+\.\d+/);
    expect(c1.settings_digest).to.match(/^sha256:[0-9a-f]{64}$/);
    expect(c1.last_seq).to.equal(0);
    expect(c1.selftest).to.equal(null);

    const sender = new TestSender(server, SERVER_ID, PREFIX, deviceId, keys);
    await sender.connect(broker.url);
    cleanups.push(() => sender.close());
    const ack = await sender.send('selftest');
    expect(ack.status).to.equal('applied');

    expect(broker.dropClient(deviceId)).to.equal(true);
    const c2 = await reports.wait((r) => r.reason === 'connect' && r.conn === 2, 10_000, 'second connect');
    expect(c2.session).to.equal(c1.session);
    // Order: same run, next connection, its first report.
    expect([c1.run, c1.n, c2.run, c2.n]).to.deep.equal([1, 1, 1, 1]);
    expect(c2.last_seq).to.equal(sender.seq);
    expect(c2.selftest?.at).to.be.a('number');
    expect(c2.selftest?.ok).to.be.a('boolean');
    // The dropped connection's will, if aedes published it, names that connection.
    for (const w of reports.reports.filter((r) => r.reason === 'offline')) expect([w.session, w.conn]).to.deep.equal([c1.session, 1]);

    const iv = await reports.wait((r) => r.reason === 'interval', (MIN_REPORT_INTERVAL_SECONDS + 5) * 1000, 'interval');
    expect([iv.session, iv.conn, iv.run]).to.deep.equal([c1.session, 2, 1]);
    expect(iv.n).to.be.at.least(2);

    agent.child.kill('SIGTERM');
    const off = await reports.wait((r) => r.reason === 'offline' && r.conn === 2, 10_000, 'offline at SIGTERM');
    expect(off.session).to.equal(c1.session);
    expect([off.run, off.n]).to.deep.equal([1, 0]);
    expect(await agent.exited).to.equal(0);
    expect(reports.bad).to.deep.equal([]);
  });

  it('mosquitto: after a broker restart (conn 2), SIGKILL of the agent makes the broker publish the will of conn 2', async function () {
    if (!(await shouldRunMosquitto())) skipBecause(this, NO_MOSQUITTO);
    const broker = await startMosquitto();
    cleanups.push(() => broker.stop());
    const { files, reports } = await setUp(broker.url, 'report-board-2');
    const agent = start(files);
    const c1 = await reports.wait((r) => r.reason === 'connect' && r.conn === 1, 10_000, 'connect');
    // A restart ends the connection without DISCONNECT from the agent; the reconnect must carry a will re-sealed for conn 2.
    await broker.restart();
    const c2 = await reports
      .wait((r) => r.reason === 'connect' && r.conn === 2, 10_000, 'connect after the restart')
      .catch((err: unknown) => {
        throw new Error(`${String(err)}\n${agent.output().slice(-3000)}`);
      });
    expect(c2.session).to.equal(c1.session);
    agent.child.kill('SIGKILL');
    // mosquitto may publish conn 1's will when it shuts down; a will reused from conn 1 would never say conn 2.
    const will = await reports.wait((r) => r.reason === 'offline' && r.conn === 2, 10_000, 'will of conn 2');
    expect(will.session).to.equal(c1.session);
    const offline = reports.reports.filter((r) => r.reason === 'offline');
    expect(offline.every((r) => r.session === c1.session && (r.conn === 1 || r.conn === 2))).to.equal(true);
    expect(reports.bad).to.deep.equal([]);
  });

  it('mosquitto: a restarted agent connects with the first will its previous run sealed ahead; one sealed for another key is not used', async function () {
    if (!(await shouldRunMosquitto())) skipBecause(this, NO_MOSQUITTO);
    const broker = await startMosquitto();
    cleanups.push(() => broker.stop());
    const { files, reports } = await setUp(broker.url, 'report-board-3');
    const nextWill = join(files.stateDir, NEXT_WILL_FILE);
    const readNext = async (): Promise<{ session: string; run: number; kid: string; token: string }> =>
      JSON.parse(await readFile(nextWill, 'utf8')) as { session: string; run: number; kid: string; token: string };
    const savedRun = async (): Promise<number> => (JSON.parse(await readFile(join(files.stateDir, 'state.json'), 'utf8')) as { report_run: number }).report_run;

    const run1 = start(files);
    const c1 = await reports.wait((r) => r.reason === 'connect' && r.conn === 1, 10_000, 'connect of run 1');
    await waitFor('next-will.json', () => exists(nextWill), 8000);
    expect((await stat(nextWill)).mode & 0o777).to.equal(0o600);
    const ahead = await readNext();
    expect(ahead.session).to.not.equal(c1.session);
    // Each start takes the next run, saved before its first CONNECT; the will sealed ahead is the next start's.
    expect([c1.run, await savedRun(), ahead.run]).to.deep.equal([1, 1, 2]);
    run1.child.kill('SIGTERM');
    expect(await run1.exited).to.equal(0);

    // Run 2 takes the file (its session is the one sealed ahead), then seals one for run 3.
    const run2 = start(files);
    const c2 = await reports.wait((r) => r.reason === 'connect' && r.session === ahead.session, 10_000, 'connect of run 2');
    expect([c2.conn, c2.run, c2.n]).to.deep.equal([1, 2, 1]);
    expect(await savedRun()).to.equal(2);
    await waitFor('a new next-will.json', async () => (await exists(nextWill)) && (await readNext()).session !== ahead.session, 8000);
    // SIGKILL: the broker publishes run 2's conn-1 will, the token sealed by run 1, and it opens with the server's keys.
    run2.child.kill('SIGKILL');
    await run2.exited;
    const will = await reports.wait((r) => r.reason === 'offline' && r.session === ahead.session, 10_000, 'will sealed ahead');
    expect([will.conn, will.run, will.n]).to.deep.equal([1, 2, 0]);

    // A file that does not match the signing key is removed and not used: run 3 seals its own will.
    const stale = await readNext();
    await writeFile(nextWill, JSON.stringify({ ...stale, kid: 'another-key' }), { mode: 0o600 });
    const run3 = start(files);
    const c3 = await reports.wait((r) => r.reason === 'connect' && r.session !== c1.session && r.session !== ahead.session, 10_000, 'connect of run 3');
    expect(c3.session).to.not.equal(stale.session);
    expect([c3.run, stale.run]).to.deep.equal([3, 3]);
    run3.child.kill('SIGKILL');
    await run3.exited;
    const will3 = await reports.wait((r) => r.reason === 'offline' && r.session === c3.session, 10_000, 'will of run 3');
    expect([will3.conn, will3.run]).to.deep.equal([1, 3]);
    expect(reports.bad).to.deep.equal([]);
  });
});
