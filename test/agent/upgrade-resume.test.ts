/**
 * An upgrade's download survives a power cut: the real agent (the bundled
 * `sensor-agent run`, a child process) is SIGKILLed in the middle of its
 * second window, one chunk already on disk is then damaged, and the agent
 * started again resumes from state.json's pending upgrade: it keeps the
 * stored chunk index, re-checks the .part chunk by chunk, truncates at the
 * damaged chunk, asks only from there on, and stages the right artifact.
 */
import { expect } from 'chai';
import { open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { generateSigningKey, type FetchRequest, type PrivateJwk } from '../../protocol/index.js';
import { startAedes, type AedesBroker } from '../helpers/brokers.js';
import { spawnAgent, type AgentProcess } from '../helpers/agent-process.js';
import { makeParty } from '../helpers/keys.js';
import { exists, makeDevice, readDeviceState, removeDir, TestServer, waitFor, type DeviceFiles } from './agent-fixture.js';
import { equipBoard, makeArtifact, makeRelease, ReleaseResponder, type Release } from './upgrade-fixture.js';

describe('agent upgrade: download resumed after SIGKILL (bundled agent process, aedes)', function () {
  this.timeout(90_000);
  const id = 'up-resume';
  let broker: AedesBroker;
  let server: TestServer;
  let files: DeviceFiles;
  let agent: AgentProcess | undefined;
  let releaseKey: PrivateJwk;
  let responder: ReleaseResponder;
  let release: Release;

  before(async function () {
    broker = await startAedes();
    const party = await makeParty();
    server = new TestServer(party, broker.url);
    await server.connect();
    files = await makeDevice({
      deviceId: id,
      brokerUrl: broker.url,
      server: party,
      keys: true,
      extra: { log_level: 'info', upgrade: { installer_path: 'upgrade-guard', install_root: 'opt' } },
    });
    await server.registerFromKeystore(id, files.keystore);
    releaseKey = await generateSigningKey();
    await equipBoard(files, [releaseKey]);
    responder = new ReleaseResponder(server.client);
    await responder.start();
    release = await makeRelease(releaseKey, { version: '0.3.0', artifact: await makeArtifact(20 * 61_440 - 5000) });
    responder.add(release);
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed' && agent) process.stderr.write(`--- agent output ---\n${agent.output()}\n---\n`);
  });

  after(async function () {
    if (agent?.running()) {
      agent.child.kill('SIGKILL');
      await agent.exited;
    }
    await server?.close();
    await broker?.stop();
    if (files) await removeDir(files.dir);
  });

  async function subscribed(a: AgentProcess, nth = 1): Promise<void> {
    await waitFor('the agent subscribed', () => (a.output().match(/subscribed topic=/g) ?? []).length >= nth, 20_000);
  }

  it('keeps the index and the good chunks, truncates at a damaged one, asks from there, stages the signed artifact', async function () {
    const up = join(files.dir, 'upgrade');
    const part = join(up, '0.3.0.part');
    const chunk = release.manifest.chunks.bytes;
    agent = spawnAgent(files.configPath);
    await subscribed(agent);
    expect((await server.command(id, 'request')).claims.status).to.equal('applied');

    responder.stopAt = 12; // the second window (8-15) stalls after 8-11
    const sealed = await server.seal(id, 'upgrade', { manifest: release.jws });
    await server.publish(id, sealed.token);
    await waitFor('12 chunks on disk', async () => (await exists(part)) && (await stat(part)).size === 12 * chunk, 20_000);
    agent.child.kill('SIGKILL');
    await agent.exited;
    expect((await readDeviceState(files)).pending_upgrade).to.include({ jti: sealed.jti, phase: 'download', version: '0.3.0' });
    expect(await exists(join(up, '0.3.0.index'))).to.equal(true);

    // Chunk 10 damaged on disk (as a torn write would leave it).
    const fh = await open(part, 'r+');
    await fh.write(Buffer.from([0xaa, 0x55]), 0, 2, 10 * chunk + 100);
    await fh.close();

    responder.stopAt = Infinity;
    const asked = responder.requests.length;
    agent = spawnAgent(files.configPath);
    await waitFor('staged.json', () => exists(join(up, 'staged.json')), 30_000);
    const after: FetchRequest[] = responder.requests.slice(asked).map((r) => r.req);
    expect(after.some((r) => 'index' in r)).to.equal(false);
    const first = after[0];
    expect(first !== undefined && 'from' in first ? first.from : -1).to.equal(10);
    expect((await readFile(join(up, 'artifact.tar.gz'))).equals(release.artifact)).to.equal(true);
    expect(await exists(part)).to.equal(false);
    expect((await readDeviceState(files)).pending_upgrade).to.include({ jti: sealed.jti, phase: 'staged' });
    expect(agent.output()).to.match(/upgrade download resumed .*chunks_done=10/);
    expect(server.acks.some((a) => a.claims.ref === sealed.jti)).to.equal(false);
  });
});
