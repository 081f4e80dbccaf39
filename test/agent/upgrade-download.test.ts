/**
 * `upgrade` on the agent (in process, over aedes), against a small in-test
 * server that signs release manifests with a release key, seals the command
 * and answers the agent's fetch requests with chunk frames of a real tar.gz:
 * accepted, downloaded chunk by chunk (each checked against the signed index)
 * to staged.json; a redelivered copy while pending gets no ack; a second
 * upgrade is busy; the installer's result (failed E_UPGRADE_INSTALL) is acked
 * and the hand-over files go; a tampered chunk fails the upgrade with
 * E_UPGRADE_CHUNK and nothing staged.
 */
import { expect } from 'chai';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { bufferedLogger } from '../../lib/log.js';
import { generateSigningKey, type PrivateJwk } from '../../protocol/index.js';
import type { AgentState } from '../../agent/store/state.js';
import { addSuiteDevice, exists, readDeviceState, startSuiteAgent, useAedesSuite, waitFor, type DeviceFiles } from './agent-fixture.js';
import { equipBoard, makeArtifact, makeRelease, ReleaseResponder, type Release } from './upgrade-fixture.js';

const UPGRADE_EXTRA = { upgrade: { installer_path: 'upgrade-guard', install_root: 'opt' } };

describe('agent upgrade: download to staged (aedes, in process)', function () {
  this.timeout(60_000);
  const logs = bufferedLogger('debug');
  const suite = useAedesSuite(logs);
  let releaseKey: PrivateJwk;
  let responder: ReleaseResponder;
  let release: Release;

  before(async function () {
    releaseKey = await generateSigningKey();
    responder = new ReleaseResponder(suite.server.client);
    await responder.start();
    // About 11 chunks: two windows.
    release = await makeRelease(releaseKey, { version: '0.2.0', artifact: await makeArtifact(640 * 1024) });
    responder.add(release);
  });

  async function board(id: string): Promise<DeviceFiles> {
    const files = await addSuiteDevice(suite, id, { extra: UPGRADE_EXTRA });
    await equipBoard(files, [releaseKey]);
    await startSuiteAgent(suite, { configPath: files.configPath, log: logs.logger, upgradeTimings: { requestTimeoutMs: 500 } });
    const ack = await suite.server.command(id, 'request');
    expect(ack.claims.status).to.equal('applied');
    return files;
  }

  it('accepts, downloads every chunk checked against the signed index, stages it; a redelivery is not acked; the installer result is acked', async function () {
    const id = 'up-ok';
    const files = await board(id);
    const up = join(files.dir, 'upgrade');
    const sealed = await suite.server.seal(id, 'upgrade', { manifest: release.jws, deadline_s: 120 });
    await suite.server.publish(id, sealed.token);
    await waitFor('staged.json', () => exists(join(up, 'staged.json')), 30_000);

    const staged = JSON.parse(await readFile(join(up, 'staged.json'), 'utf8')) as Record<string, unknown>;
    expect(staged).to.deep.equal({ version: '0.2.0', manifest: release.jws, deadline_s: 120, jti: sealed.jti, seq: sealed.seq, from: '0.1.0' });
    expect((await readFile(join(up, 'artifact.tar.gz'))).equals(release.artifact)).to.equal(true);
    expect(await exists(join(up, '0.2.0.part'))).to.equal(false);
    expect(await exists(join(up, '0.2.0.index'))).to.equal(false);
    let st: AgentState = await readDeviceState(files);
    expect(st.pending_upgrade).to.include({ jti: sealed.jti, version: '0.2.0', phase: 'staged', from: '0.1.0', deadline_s: 120 });
    // Index first, then chunk windows of at most 8, every chunk served.
    const mine = responder.requests.filter((r) => r.deviceId === id).map((r) => r.req);
    expect(mine[0]).to.deep.include({ index: true });
    for (const r of mine.slice(1)) expect('count' in r && r.count <= 8).to.equal(true);
    for (let n = 0; n < release.manifest.chunks.count; n++) expect(responder.served.get(n), `chunk ${n}`).to.be.at.least(1);
    expect(suite.server.acks.some((a) => a.claims.ref === sealed.jti)).to.equal(false);

    // The same command again while pending: logged, not re-acked.
    await suite.server.publish(id, sealed.token);
    await waitFor('the in-progress duplicate', () => logs.lines.some((l) => l.includes('still in progress') && l.includes(sealed.jti)));
    // Another upgrade meanwhile: busy, and nothing changes.
    const busy = await suite.server.command(id, 'upgrade', { manifest: release.jws });
    expect(busy.claims.status).to.equal('rejected');
    expect(busy.claims.code).to.equal('E_UPGRADE_BUSY');
    expect(suite.server.acks.some((a) => a.claims.ref === sealed.jti)).to.equal(false);

    // The installer refuses before the switch: result.json failed E_UPGRADE_INSTALL, acked on the same path.
    const wait = suite.server.waitAck((a) => a.claims.ref === sealed.jti, 10_000);
    await writeFile(
      join(up, 'result.json'),
      JSON.stringify({
        status: 'failed',
        code: 'E_UPGRADE_INSTALL',
        detail: 'unpack failed: disk full',
        version: '0.2.0',
        from: '0.1.0',
        jti: sealed.jti,
        seq: sealed.seq,
      }),
      { mode: 0o600 },
    );
    const ack = await wait;
    expect(ack.claims).to.include({ status: 'failed', code: 'E_UPGRADE_INSTALL', detail: 'unpack failed: disk full', seq: sealed.seq });
    expect(ack.claims.result).to.deep.equal({ version: '0.1.0' });
    await waitFor('hand-over files removed', async () => !(await exists(join(up, 'result.json'))));
    for (const f of ['staged.json', 'artifact.tar.gz']) expect(await exists(join(up, f)), f).to.equal(false);
    st = await readDeviceState(files);
    expect(st.pending_upgrade).to.equal(null);
    expect(st.recent.find((r) => r.jti === sealed.jti)).to.include({ status: 'failed', code: 'E_UPGRADE_INSTALL' });
    // Decided: a duplicate now gets that answer.
    const dup = suite.server.waitAck((a) => a.claims.ref === sealed.jti && a.claims.detail.startsWith('duplicate'));
    await suite.server.publish(id, sealed.token);
    expect((await dup).claims).to.include({ status: 'failed', code: 'E_UPGRADE_INSTALL' });
  });

  it('a tampered chunk, three times: failed E_UPGRADE_CHUNK, partial download removed, nothing staged', async function () {
    const id = 'up-tamper';
    const files = await board(id);
    const up = join(files.dir, 'upgrade');
    responder.tamper.add(9);
    try {
      const served = responder.served.get(9) ?? 0;
      const ack = await suite.server.command(id, 'upgrade', { manifest: release.jws }, {});
      // The first ack is the failure (accepted commands are acked only when decided).
      expect(ack.claims).to.include({ status: 'failed', code: 'E_UPGRADE_CHUNK' });
      expect(ack.claims.detail).to.match(/chunk 9 did not match the signed manifest 3 times/);
      expect((responder.served.get(9) ?? 0) - served).to.equal(3);
      for (const f of ['staged.json', 'artifact.tar.gz', '0.2.0.part', '0.2.0.index']) expect(await exists(join(up, f)), f).to.equal(false);
      const st = await readDeviceState(files);
      expect(st.pending_upgrade).to.equal(null);
      expect(st.recent.find((r) => r.jti === ack.claims.ref)).to.include({ status: 'failed', code: 'E_UPGRADE_CHUNK' });
    } finally {
      responder.tamper.delete(9);
    }
  });
});
