/**
 * An upgrade with a `mirror`: the bundled agent (a child process trusting a
 * throwaway CA through NODE_EXTRA_CA_CERTS) takes the chunk index over the
 * broker and the chunks from an HTTPS server with Range requests, each chunk
 * checked against the signed index before it is written: a chunk the mirror
 * serves tampered once is asked again alone, and the signed artifact is
 * staged. No chunk goes through the broker.
 */
import { expect } from 'chai';
import { WINDOW } from '../../agent/upgrade/download.js';
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { generateSigningKey, type PrivateJwk } from '../../protocol/index.js';
import { makeTestCertificates, startAedes, type AedesBroker } from '../helpers/brokers.js';
import { spawnAgent, type AgentProcess } from '../helpers/agent-process.js';
import { makeParty } from '../helpers/keys.js';
import { exists, makeDevice, readDeviceState, removeDir, TestServer, waitFor, type DeviceFiles } from './agent-fixture.js';
import { equipBoard, makeArtifact, makeRelease, ReleaseResponder, type Release } from './upgrade-fixture.js';

describe('agent upgrade: chunks from an HTTPS mirror (bundled agent process, aedes)', function () {
  this.timeout(90_000);
  const id = 'up-mirror';
  let broker: AedesBroker;
  let server: TestServer;
  let files: DeviceFiles;
  let agent: AgentProcess | undefined;
  let releaseKey: PrivateJwk;
  let responder: ReleaseResponder;
  let release: Release;
  let https: Server;
  let caFile: string;
  const ranges: string[] = [];
  let tamperOnce = true;

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
    release = await makeRelease(releaseKey, { version: '0.5.0', artifact: await makeArtifact(10 * 61_440 + 777) });
    responder.add(release);
    responder.stopAt = 0; // the broker serves the index only

    const certs = await makeTestCertificates(files.dir);
    caFile = certs.caFile;
    https = createServer({ cert: await readFile(certs.certFile), key: await readFile(certs.keyFile) }, (req, res) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (req.url !== '/releases/artifact.tar.gz' || !m) {
        res.writeHead(404).end();
        return;
      }
      ranges.push(req.headers.range as string);
      const start = Number(m[1]);
      const end = Math.min(Number(m[2]), release.artifact.length - 1);
      const body = Buffer.from(release.artifact.subarray(start, end + 1));
      const chunk2 = 2 * 61_440;
      if (tamperOnce && start <= chunk2 && end >= chunk2) {
        tamperOnce = false;
        body[chunk2 - start + 10] = (body[chunk2 - start + 10] ?? 0) ^ 0xff;
      }
      res.writeHead(206, { 'content-range': `bytes ${start}-${end}/${release.artifact.length}`, 'content-length': body.length });
      res.end(body);
    });
    await new Promise<void>((r) => https.listen(0, '127.0.0.1', () => r()));
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed' && agent) process.stderr.write(`--- agent output ---\n${agent.output()}\n---\n`);
  });

  after(async function () {
    if (agent?.running()) {
      agent.child.kill('SIGKILL');
      await agent.exited;
    }
    https?.close();
    await server?.close();
    await broker?.stop();
    if (files) await removeDir(files.dir);
  });

  it('index over the broker, chunks by Range from the mirror, a tampered one asked again alone; staged', async function () {
    const up = join(files.dir, 'upgrade');
    agent = spawnAgent(files.configPath, { NODE_EXTRA_CA_CERTS: caFile });
    await waitFor('the agent subscribed', () => agent?.output().includes('subscribed topic=') === true, 20_000);
    expect((await server.command(id, 'request')).claims.status).to.equal('applied');

    const port = (https.address() as AddressInfo).port;
    const sealed = await server.seal(id, 'upgrade', { manifest: release.jws, mirror: `https://127.0.0.1:${port}/releases/artifact.tar.gz` });
    await server.publish(id, sealed.token);
    await waitFor(
      'staged.json and the phase saved',
      async () => (await exists(join(up, 'staged.json'))) && (await readDeviceState(files)).pending_upgrade?.phase === 'staged',
      30_000,
    );
    expect((await readFile(join(up, 'artifact.tar.gz'))).equals(release.artifact)).to.equal(true);
    expect((await readDeviceState(files)).pending_upgrade).to.include({
      jti: sealed.jti,
      phase: 'staged',
      mirror: `https://127.0.0.1:${port}/releases/artifact.tar.gz`,
    });
    const c = 61_440;
    const len = release.artifact.length;
    // Window by window (WINDOW chunks a request), with the tampered chunk 2 asked again alone.
    const windows = [`bytes=0-${Math.min(WINDOW * c, len) - 1}`, `bytes=${2 * c}-${3 * c - 1}`];
    for (let at = WINDOW * c; at < len; at += WINDOW * c) windows.push(`bytes=${at}-${Math.min(at + WINDOW * c, len) - 1}`);
    expect(ranges).to.deep.equal(windows);
    const mine = responder.requests.filter((r) => r.deviceId === id).map((r) => r.req);
    expect(mine).to.have.length(1);
    expect(mine[0]).to.deep.include({ index: true });
    expect(agent.output()).to.match(/upgrade chunk refused .*chunk=2 times=1/);
  });
});
