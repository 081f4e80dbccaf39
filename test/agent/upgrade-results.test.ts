/**
 * The agent's side of the installer's decisions (in process, over aedes):
 * - rolled back: the previous agent starts with the installer's result.json
 *   (rolled_back E_UPGRADE_CRASH_LOOP) and acks it with the code; the
 *   command's record says so (a duplicate gets that answer), and the
 *   hand-over files are removed once the ack is PUBACKed;
 * - on trial: trial.json names this agent's version, so it writes
 *   progress.json as it goes (started, connected, self-test, a report
 *   confirmed), reports the phase, and writes `healthy`; the installer's
 *   result (applied) is acked with {version, previous}.
 */
import { expect } from 'chai';
import { mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { bufferedLogger } from '../../lib/log.js';
import { generateSigningKey, KeyRing, openReport, reportTopic, toPublicJwk, type PrivateJwk, type ReportClaims } from '../../protocol/index.js';
import type { AgentState } from '../../agent/store/state.js';
import { KeyStore } from '../../agent/store/keystore.js';
import {
  addSuiteDevice,
  exists,
  PREFIX,
  readDeviceState,
  SERVER_ID,
  startSuiteAgent,
  stopSuiteAgent,
  useAedesSuite,
  waitFor,
  type DeviceFiles,
} from './agent-fixture.js';
import { equipBoard, makeArtifact, makeRelease, ReleaseResponder } from './upgrade-fixture.js';

const UPGRADE_EXTRA = { upgrade: { installer_path: 'upgrade-guard', install_root: 'opt' } };

describe('agent upgrade: the installer decides, the agent acks (aedes, in process)', function () {
  this.timeout(60_000);
  const logs = bufferedLogger('debug');
  const suite = useAedesSuite(logs);
  let releaseKey: PrivateJwk;

  before(async function () {
    releaseKey = await generateSigningKey();
  });

  async function board(id: string): Promise<DeviceFiles> {
    const f = await addSuiteDevice(suite, id, { extra: UPGRADE_EXTRA });
    await equipBoard(f, [releaseKey]);
    const agent = await startSuiteAgent(suite, { configPath: f.configPath, log: logs.logger });
    expect((await suite.server.command(id, 'request')).claims.status).to.equal('applied');
    await stopSuiteAgent(suite, agent);
    return f;
  }

  it('rolled back: the previous agent acks rolled_back with the code at start; files removed after the PUBACK; a duplicate gets the same', async function () {
    const id = 'up-rollback';
    const f = await board(id);
    const up = join(f.dir, 'upgrade');
    const responder = new ReleaseResponder(suite.server.client);
    await responder.start();
    const rel = await makeRelease(releaseKey, { version: '0.2.0', artifact: await makeArtifact(30 * 1024) });
    responder.add(rel);
    const agent = await startSuiteAgent(suite, { configPath: f.configPath, log: logs.logger });
    const sealed = await suite.server.seal(id, 'upgrade', { manifest: rel.jws, deadline_s: 60 });
    await suite.server.publish(id, sealed.token);
    await waitFor('staged.json', () => exists(join(up, 'staged.json')), 20_000);
    await stopSuiteAgent(suite, agent);

    // What the installer leaves after switching to 0.2.0, seeing it crash-loop and switching back.
    await unlink(join(up, 'staged.json'));
    await unlink(join(up, 'artifact.tar.gz'));
    const trial = { version: '0.2.0', from: '0.1.0', jti: sealed.jti, seq: sealed.seq, deadline_s: 60 };
    await writeFile(join(up, 'trial.json'), JSON.stringify(trial), { mode: 0o600 });
    await writeFile(join(up, 'progress.json'), JSON.stringify({ version: '0.2.0', started: true, connected: false, selftest: null, reported: false }), {
      mode: 0o600,
    });
    const result = { status: 'rolled_back', code: 'E_UPGRADE_CRASH_LOOP', detail: '0.2.0 restarted 3 times; back to 0.1.0', ...trial };
    await writeFile(join(up, 'result.json'), JSON.stringify(result), { mode: 0o600 });

    const wait = suite.server.waitAck((a) => a.claims.ref === sealed.jti, 10_000);
    await startSuiteAgent(suite, { configPath: f.configPath, log: logs.logger });
    const ack = await wait;
    expect(ack.claims).to.include({ status: 'rolled_back', code: 'E_UPGRADE_CRASH_LOOP', detail: '0.2.0 restarted 3 times; back to 0.1.0', seq: sealed.seq });
    expect(ack.claims.result).to.deep.equal({ version: '0.1.0' });
    await waitFor('hand-over files removed', async () => !(await exists(join(up, 'result.json'))));
    for (const file of ['trial.json', 'progress.json', 'healthy']) expect(await exists(join(up, file)), file).to.equal(false);
    const st: AgentState = await readDeviceState(f);
    expect(st.pending_upgrade).to.equal(null);
    expect(st.recent.find((r) => r.jti === sealed.jti)).to.include({ status: 'rolled_back', code: 'E_UPGRADE_CRASH_LOOP' });
    const dup = suite.server.waitAck((a) => a.claims.ref === sealed.jti && a.claims.detail.startsWith('duplicate'));
    await suite.server.publish(id, sealed.token);
    expect((await dup).claims).to.include({ status: 'rolled_back', code: 'E_UPGRADE_CRASH_LOOP' });
  });

  it('on trial: progress.json as it goes, the phase in reports, healthy after connect + self-test + a confirmed report; applied acked with {version, previous}', async function () {
    const id = 'up-trial';
    const f = await board(id);
    const up = join(f.dir, 'upgrade');
    // The command the old release (0.0.9) accepted and staged, and the installer's trial record for this release (0.1.0).
    const rel = await makeRelease(releaseKey, { version: '0.1.0', artifact: await makeArtifact(10 * 1024) });
    const sealed = await suite.server.seal(id, 'upgrade', { manifest: rel.jws, deadline_s: 120 });
    const st0: AgentState = await readDeviceState(f);
    const pending = { jti: sealed.jti, seq: sealed.seq, version: '0.1.0', manifest: rel.jws, deadline_s: 120, phase: 'staged', from: '0.0.9' };
    await writeFile(join(f.stateDir, 'state.json'), JSON.stringify({ ...st0, pending_upgrade: pending, last_seq: sealed.seq }));
    await mkdir(up, { mode: 0o700, recursive: true });
    await writeFile(join(up, 'trial.json'), JSON.stringify({ version: '0.1.0', from: '0.0.9', jti: sealed.jti, seq: sealed.seq, deadline_s: 120 }), {
      mode: 0o600,
    });

    // Reports, opened as the server does.
    const ks = await KeyStore.open(f.keystore);
    const reports: ReportClaims[] = [];
    const watcher = await mqtt.connectAsync(suite.broker.url, { clientId: `reports-${id}` });
    const decryption = await KeyRing.create([suite.party.encryption]);
    const verification = await KeyRing.create([toPublicJwk(ks.signingKey as PrivateJwk)]);
    watcher.on('message', (_t, payload) => {
      void openReport(payload, { serverId: SERVER_ID, deviceId: id, decryption, verification }).then(({ claims }) => reports.push(claims));
    });
    await watcher.subscribeAsync(reportTopic(PREFIX, id), { qos: 1 });
    try {
      await startSuiteAgent(suite, { configPath: f.configPath, log: logs.logger });
      await waitFor('healthy', () => exists(join(up, 'healthy')), 20_000);
      expect(await readFile(join(up, 'healthy'), 'utf8')).to.equal('0.1.0\n');
      expect(JSON.parse(await readFile(join(up, 'progress.json'), 'utf8'))).to.deep.equal({
        version: '0.1.0',
        started: true,
        connected: true,
        selftest: true,
        reported: true,
      });
      expect((await readDeviceState(f)).pending_upgrade).to.include({ phase: 'trial', version: '0.1.0' });
      await waitFor('a report with the trial phase', () => reports.some((r) => r.upgrade?.phase === 'trial'));
      expect(reports.find((r) => r.upgrade)?.upgrade).to.deep.equal({ to: '0.1.0', phase: 'trial' });
      expect(reports[0]?.agent_version).to.equal('0.1.0');

      // The installer commits.
      const wait = suite.server.waitAck((a) => a.claims.ref === sealed.jti, 10_000);
      await writeFile(
        join(up, 'result.json'),
        JSON.stringify({ status: 'applied', code: 'OK', detail: 'committed 0.1.0', version: '0.1.0', from: '0.0.9', jti: sealed.jti, seq: sealed.seq }),
        { mode: 0o600 },
      );
      const ack = await wait;
      expect(ack.claims).to.include({ status: 'applied', code: 'OK', detail: 'committed 0.1.0' });
      expect(ack.claims.result).to.deep.equal({ version: '0.1.0', previous: '0.0.9' });
      await waitFor('hand-over files removed', async () => !(await exists(join(up, 'result.json'))));
      for (const file of ['trial.json', 'progress.json', 'healthy']) expect(await exists(join(up, file)), file).to.equal(false);
      expect((await readDeviceState(f)).pending_upgrade).to.equal(null);
      const n = reports.length;
      await waitFor('a report after the commit', () => reports.length > n && reports.at(-1)?.upgrade === null, 10_000);
    } finally {
      await watcher.endAsync(true);
    }
  });
});
