/**
 * The chunk server of `serve` over a real broker (aedes in process): a board
 * with an upgrade command in flight fetches the chunk index and the chunks of
 * its release on its own topics and reassembles the artifact byte for byte;
 * a board without one, a decommissioned one, a finished upgrade, an unknown
 * artifact get nothing; a flood is rate-limited per device; garbage never
 * crashes it and is logged as one line per interval, not one per message.
 */
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { chunkTopic, encodeFetch, fetchTopic, parseChunkFrame, toPublicJwk, type ChunkFrame } from '../../protocol/index.js';
import type { ChunkResult } from '../../server/chunk-server.js';
import { createLogger } from '../../lib/log.js';
import { loadReleaseKey } from '../../server/keys/release-key.js';
import { addReleaseFromTree } from '../../server/releases/store.js';
import { makeSimDevice, eventually, type SimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { makeTree } from './release-tree.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A board's side of the transfer: its own MQTT session, the frames that came on its chunk topic. */
class BoardLink {
  readonly frames: ChunkFrame[] = [];
  private constructor(
    readonly id: string,
    readonly client: MqttClient,
  ) {}

  static async open(url: string, id: string): Promise<BoardLink> {
    const client = await mqtt.connectAsync(url, { clientId: `board-${id}-${Math.random().toString(16).slice(2)}`, clean: true, reconnectPeriod: 0 });
    const link = new BoardLink(id, client);
    client.on('message', (_t, payload) => link.frames.push(parseChunkFrame(payload)));
    await client.subscribeAsync(chunkTopic('provision', id), { qos: 0 });
    return link;
  }

  async send(payload: Buffer | string): Promise<void> {
    await this.client.publishAsync(fetchTopic('provision', this.id), payload, { qos: 0 });
  }
}

describe('server: the chunk server answers only upgrades in flight, rate-limited, never crashing', function () {
  this.timeout(60_000);
  let f: Fixture;
  const results: ChunkResult[] = [];
  const lines: string[] = [];
  let release: { sha256: string; dir: string; count: number };
  let a: SimDevice;
  let b: SimDevice;
  let linkA: BoardLink;
  let linkB: BoardLink;

  before(async () => {
    f = await startFixture({
      onFetch: (r) => results.push(r),
      log: createLogger({ level: 'info', write: (line) => lines.push(line) }),
    });
    const storage = f.server.data.storage;
    const tree = await makeTree(join(f.dir, 'tree'), { version: '0.2.0', payload: 400_000 });
    const added = await addReleaseFromTree(storage, f.dataDir, tree, { agentOnly: true, key: await loadReleaseKey(f.dataDir) });
    release = { sha256: added.record.sha256, dir: added.record.dir, count: added.manifest.chunks.count };
    expect(release.count).to.be.above(6);
    a = f.fleet.add(await makeSimDevice('chunk-a', 'silent'));
    b = f.fleet.add(await makeSimDevice('chunk-b', 'silent'));
    for (const d of [a, b])
      await storage.devices.add({
        id: d.id,
        userId: 'u',
        origin: 'jwks',
        signing: toPublicJwk(d.signing),
        encryption: toPublicJwk(d.encryption),
        state: 'provisioned',
      });
    linkA = await BoardLink.open(f.broker.url, a.id);
    linkB = await BoardLink.open(f.broker.url, b.id);
  });

  after(async () => {
    await linkA?.client.endAsync();
    await linkB?.client.endAsync();
    await f?.close();
  });

  const resultsOf = (id: string): ChunkResult[] => results.filter((r) => r.kind !== 'ignored' && r.deviceId === id);

  it('gives nothing to a board without an upgrade command in flight', async () => {
    await linkA.send(encodeFetch({ v: 1, sha256: release.sha256, index: true }));
    await eventually(() => resultsOf(a.id).length === 1, 5000, 'the request handled');
    expect(resultsOf(a.id)[0]).to.deep.include({ kind: 'refused', why: 'not-in-flight' });
    await sleep(300);
    expect(linkA.frames).to.have.length(0);
  });

  it('serves the index and the chunks (at most 16 a request) to a board with the upgrade in flight; the artifact reassembles exactly', async () => {
    const c = await f.server.send({ deviceId: a.id, action: 'upgrade', params: { release: '0.2.0', arch: 'arm64' } });
    expect(c.releaseSha256).to.equal(release.sha256);
    await eventually(() => a.received.length === 1, 5000, 'the board got the upgrade command');
    await linkA.send(encodeFetch({ v: 1, sha256: release.sha256, index: true }));
    await eventually(() => linkA.frames.length === 1, 5000, 'the index frame');
    const index = linkA.frames[0] as ChunkFrame;
    expect(index.kind).to.equal('index');
    expect(index.sha256).to.equal(release.sha256);
    expect(Buffer.compare(index.data, await readFile(join(release.dir, 'index.bin')))).to.equal(0);
    linkA.frames.length = 0;
    await linkA.send(encodeFetch({ v: 1, sha256: release.sha256, from: 0, count: 5 }));
    await linkA.send(encodeFetch({ v: 1, sha256: release.sha256, from: 5, count: 16 }));
    await eventually(() => linkA.frames.length === release.count, 10_000, 'every chunk');
    const chunks = [...linkA.frames].sort((x, y) => x.number - y.number);
    expect(chunks.map((x) => x.number)).to.deep.equal(Array.from({ length: release.count }, (_, i) => i));
    for (const ch of chunks) {
      expect(ch.kind).to.equal('chunk');
      expect(sha256(ch.data), `chunk ${ch.number}`).to.equal(index.data.subarray(ch.number * 32, ch.number * 32 + 32).toString('hex'));
    }
    const artifact = Buffer.concat(chunks.map((x) => x.data));
    expect(sha256(artifact)).to.equal(release.sha256);
    expect(Buffer.compare(artifact, await readFile(join(release.dir, 'artifact.tar.gz')))).to.equal(0);
    // Past the end: nothing.
    linkA.frames.length = 0;
    await linkA.send(encodeFetch({ v: 1, sha256: release.sha256, from: release.count, count: 1 }));
    await eventually(() => resultsOf(a.id).some((r) => r.kind === 'refused' && r.why === 'out-of-range'), 5000, 'out of range refused');
  });

  it('another board asking for the same artifact gets nothing; nor a decommissioned one, nor an artifact the server does not hold', async () => {
    await sleep(2500); // the buckets refill
    await linkB.send(encodeFetch({ v: 1, sha256: release.sha256, index: true }));
    await linkA.send(encodeFetch({ v: 1, sha256: 'ab'.repeat(32), index: true }));
    await eventually(() => resultsOf(b.id).length === 1 && resultsOf(a.id).some((r) => r.kind === 'refused' && r.why === 'no-release'), 5000, 'both handled');
    expect(resultsOf(b.id)[0]).to.deep.include({ kind: 'refused', why: 'not-in-flight' });
    const storage = f.server.data.storage;
    const ghost = await makeSimDevice('chunk-ghost');
    await storage.devices.add({
      id: ghost.id,
      userId: 'u',
      origin: 'jwks',
      signing: toPublicJwk(ghost.signing),
      encryption: toPublicJwk(ghost.encryption),
      state: 'decommissioned',
    });
    const linkG = await BoardLink.open(f.broker.url, ghost.id);
    try {
      await linkG.send(encodeFetch({ v: 1, sha256: release.sha256, index: true }));
      await eventually(() => resultsOf(ghost.id).length === 1, 5000, 'handled');
      expect(resultsOf(ghost.id)[0]).to.deep.include({ kind: 'refused', why: 'unknown-device' });
      await sleep(200);
      expect(linkG.frames).to.have.length(0);
    } finally {
      await linkG.client.endAsync();
    }
    expect(linkB.frames).to.have.length(0);
  });

  it('rate-limits a flood per device (burst 8, 4/s) and survives garbage, logging one summary line, not one per message', async () => {
    await sleep(2500);
    const before = resultsOf(a.id).length;
    const logBefore = lines.filter((l) => l.includes('fetch.refused')).length;
    for (let i = 0; i < 40; i++) await linkA.send(encodeFetch({ v: 1, sha256: release.sha256, index: true }));
    await eventually(() => resultsOf(a.id).length - before === 40, 10_000, '40 handled');
    const flood = resultsOf(a.id).slice(before);
    const served = flood.filter((r) => r.kind === 'served').length;
    expect(served).to.be.within(8, 11);
    expect(flood.filter((r) => r.kind === 'refused' && r.why === 'rate-limited').length).to.equal(40 - served);

    // Garbage from another board: not JSON, too big, wrong shapes, binary; each refused, nothing served, nothing thrown.
    const garbage: (Buffer | string)[] = [
      'not json',
      '{}',
      JSON.stringify({ v: 2, sha256: release.sha256, index: true }),
      JSON.stringify({ v: 1, sha256: release.sha256, from: -1, count: 1 }),
      JSON.stringify({ v: 1, sha256: release.sha256, from: 0, count: 17 }),
      JSON.stringify({ v: 1, sha256: release.sha256, index: true, pad: 'x'.repeat(300) }),
      Buffer.from([0, 1, 2, 255, 254]),
    ];
    const mark = resultsOf(b.id).length;
    for (const g of garbage) await linkB.send(g);
    await eventually(() => resultsOf(b.id).length - mark === garbage.length, 5000, 'garbage handled');
    expect(
      resultsOf(b.id)
        .slice(mark)
        .every((r) => r.kind === 'refused' && r.why === 'malformed'),
    ).to.equal(true);
    expect(linkB.frames).to.have.length(0);
    // Dozens of refusals in a few seconds: at most one summary line since the flood began.
    expect(lines.filter((l) => l.includes('fetch.refused')).length - logBefore).to.be.at.most(1);
    // serve still answers.
    await sleep(2500);
    linkA.frames.length = 0;
    await linkA.send(encodeFetch({ v: 1, sha256: release.sha256, from: 0, count: 1 }));
    await eventually(() => linkA.frames.length === 1, 5000, 'served after the flood');
  });

  it('stops serving once the upgrade is answered', async () => {
    const storage = f.server.data.storage;
    const c = (await storage.commands.list({ deviceId: a.id })).find((x) => x.action === 'upgrade');
    expect(c).to.not.equal(undefined);
    await storage.commands.recordAck(
      a.id,
      {
        iss: a.id,
        aud: f.server.data.keys.serverId,
        iat: Math.floor(Date.now() / 1000),
        jti: 'ack-rolled-back',
        ref: c?.jti as string,
        seq: c?.seq as number,
        status: 'rolled_back',
        code: 'E_UPGRADE_SELFTEST',
        detail: 'self-test failed',
        result: { version: '0.1.0', previous: '0.2.0' },
      },
      [],
    );
    await sleep(2500);
    const mark = resultsOf(a.id).length;
    linkA.frames.length = 0;
    await linkA.send(encodeFetch({ v: 1, sha256: release.sha256, index: true }));
    await eventually(() => resultsOf(a.id).length === mark + 1, 5000, 'handled');
    expect(resultsOf(a.id)[mark]).to.deep.include({ kind: 'refused', why: 'not-in-flight' });
    // A rolled-back upgrade records no new version.
    expect((await storage.devices.require(a.id)).arch).to.equal(null);
  });
});
