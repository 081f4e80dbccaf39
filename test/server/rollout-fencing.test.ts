/**
 * Fencing of the rollout lease: two engines over one registry file (two
 * Registry connections, as two `serve` processes) and a real broker (aedes in
 * process) with simulated boards. Engine A claims both targets and stalls in
 * the middle of sealing (one before its command is recorded, one after)
 * longer than the lease; engine B takes over and delivers (the command A had
 * recorded it adopts and publishes as sealed; for the other it seals one).
 * When A resumes it must publish nothing: every board gets exactly one
 * command (one seq), and the command A sealed after losing the lease is
 * voided (never published, never re-published).
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { bufferedLogger, silentLogger } from '../../lib/log.js';
import { KeyRing, generateEncryptionKey, generateSigningKey, toJwkSet, toPublicJwk } from '../../protocol/index.js';
import { CommandSender, type SendRequest } from '../../server/core/command-sender.js';
import { publishQos1 } from '../../server/core/mqtt-connection.js';
import { openSqliteStorage, type SqliteStorage } from '../../server/storage/sqlite/index.js';
import type { Storage } from '../../server/storage/types.js';
import { commandStatus } from '../../server/http/record-views.js';
import type { CommandRecord } from '../../server/storage/records.js';
import { LEASE_TTL_MS, RolloutEngine } from '../../server/rollouts/engine.js';
import { planRollout, startRollout } from '../../server/rollouts/plan.js';
import type { ServerKeys } from '../../server/keys/server-keys.js';
import { startAedes, type AedesBroker } from '../helpers/brokers.js';
import { eventually, makeSimDevice, SimFleet, type SimDevice } from './sim-fleet.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function serverKeys(): Promise<ServerKeys> {
  const [signing, encryption] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
  return { dir: '', serverId: 'fence-server', signing, encryption, trust: toJwkSet([signing, encryption]), decryption: await KeyRing.create([encryption]) };
}

/**
 * A real sender (seals with real keys, records, publishes to the broker) that
 * stalls until `release`: for `before` ahead of sealing (no seq, no record yet),
 * for every other device after its command was sealed and recorded.
 */
class StallingSender extends CommandSender {
  readonly stalled = new Set<string>();
  published = 0;
  readonly publishedTo: string[] = [];
  readonly #gate: Promise<void>;
  readonly #before: string;

  constructor(storage: Storage, keys: ServerKeys, client: MqttClient, gate: Promise<void>, before: string) {
    super({ storage, keys, topicPrefix: 'provision', publish: (topic, payload) => publishQos1(client, topic, payload) });
    this.#gate = gate;
    this.#before = before;
  }

  override async seal(req: SendRequest): Promise<{ command: CommandRecord; token: string }> {
    if (req.deviceId === this.#before) {
      this.stalled.add(req.deviceId);
      await this.#gate;
      return super.seal(req);
    }
    const sealed = await super.seal(req);
    this.stalled.add(req.deviceId);
    await this.#gate;
    return sealed;
  }

  override async publish(deviceId: string, jti: string, token: string): Promise<void> {
    this.published++;
    this.publishedTo.push(deviceId);
    await super.publish(deviceId, jti, token);
  }
}

describe('server: rollout lease fencing (a stalled engine publishes nothing once another took over)', function () {
  this.timeout(30_000);
  let dir: string;
  let broker: AedesBroker;
  let fleet: SimFleet;
  const clients: MqttClient[] = [];
  // Both engines' registries read one clock, which the tests move past the lease while an engine stalls.
  let skew = 0;
  let storageA: SqliteStorage;
  let storageB: SqliteStorage;
  let keys: ServerKeys;
  let delivered: Map<string, number>;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rollout-fencing-'));
    broker = await startAedes();
    const now = (): number => Date.now() + skew;
    const file = join(dir, 'registry.sqlite');
    storageA = openSqliteStorage(file, { create: true, now });
    storageB = openSqliteStorage(file, { now });
    keys = await serverKeys();
    fleet = await SimFleet.connect(broker.url, { trust: keys.trust, serverId: keys.serverId });
    // What the broker delivers on each command topic, counted by a plain subscriber.
    const watcher = await mqtt.connectAsync(broker.url, { clientId: 'fence-watcher', clean: true, reconnectPeriod: 0 });
    clients.push(watcher);
    delivered = new Map<string, number>();
    watcher.on('message', (topic) => delivered.set(topic, (delivered.get(topic) ?? 0) + 1));
    await watcher.subscribeAsync('provision/+/command', { qos: 1 });
  });

  async function boards(...ids: string[]): Promise<SimDevice[]> {
    const devices: SimDevice[] = [];
    for (const id of ids) {
      const d = fleet.add(await makeSimDevice(id));
      await storageA.devices.add({
        id,
        userId: 'u1',
        origin: 'jwks',
        signing: toPublicJwk(d.signing),
        encryption: toPublicJwk(d.encryption),
        state: 'provisioned',
      });
      devices.push(d);
    }
    return devices;
  }
  after(async () => {
    await fleet?.close().catch(() => undefined);
    for (const c of clients) await c.endAsync().catch(() => undefined);
    await storageA?.close();
    await storageB?.close();
    await broker?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('each board gets exactly one command (one seq); the stalled engine publishes nothing and what it sealed late is voided', async () => {
    const devices = await boards('fence-before', 'fence-after');
    const clientA = await mqtt.connectAsync(broker.url, { clientId: 'fence-engine-a', clean: true, reconnectPeriod: 0 });
    const clientB = await mqtt.connectAsync(broker.url, { clientId: 'fence-engine-b', clean: true, reconnectPeriod: 0 });
    clients.push(clientA, clientB);

    const r = await startRollout(
      storageA,
      await planRollout(storageA, keys, { action: 'selftest', selector: { devices: devices.map((d) => d.id) }, ttlSeconds: 120 }),
    );
    let release: () => void = () => undefined;
    const senderA = new StallingSender(storageA, keys, clientA, new Promise<void>((res) => (release = res)), 'fence-before');
    const logA = bufferedLogger('info');
    const engineA = new RolloutEngine({ storage: storageA, sender: senderA, log: logA.logger, holder: 'engine-a', tickMs: 50 });
    const senderB = new CommandSender({ storage: storageB, keys, topicPrefix: 'provision', publish: (topic, payload) => publishQos1(clientB, topic, payload) });
    const engineB = new RolloutEngine({ storage: storageB, sender: senderB, log: silentLogger, holder: 'engine-b', tickMs: 50 });
    try {
      engineA.start();
      await eventually(() => senderA.stalled.size === 2, 5000, 'engine A stalled with both targets claimed');
      expect((await storageA.rollouts.counts(r.id)).sending).to.equal(2);

      // A stalls past its lease: B takes over and delivers.
      skew += LEASE_TTL_MS + 1000;
      engineB.start();
      await eventually(() => devices.every((d) => d.applied.length === 1), 10_000, 'engine B delivered to both boards');

      // A resumes: it lost the lease, so it publishes nothing.
      release();
      await engineA.idle();
      await sleep(500);
      await engineA.stop();
      await sleep(300);

      for (const d of devices) {
        expect(delivered.get(`provision/${d.id}/command`), `commands the broker delivered for ${d.id}`).to.equal(1);
        expect(
          d.received.map((x) => x.claims.seq),
          `${d.id} received one command`,
        ).to.have.length(1);
        expect(d.applied, `${d.id} applied once`).to.have.length(1);
      }
      expect(senderA.published, 'publishes by the engine that lost the lease').to.equal(0);
      expect(logA.lines.filter((l) => l.includes('rollout.fenced'))).to.have.length(2);
      // What A sealed after losing the lease is voided; what it had recorded before, B adopted.
      // The targets hold the commands the boards got.
      const commands = await storageA.commands.list({ fanoutId: r.id });
      expect(commands.filter((c) => c.voidedAt !== null).map((c) => c.deviceId)).to.deep.equal(['fence-before']);
      expect(commands.filter((c) => c.voidedAt !== null).map((c) => commandStatus(c))).to.deep.equal(['void']);
      expect(commands).to.have.length(3);
      for (const t of await storageA.rollouts.targets(r.id)) {
        const c = await storageA.commands.get(t.jti ?? '');
        expect(c?.voidedAt, `${t.deviceId}'s command`).to.equal(null);
        expect(c?.seq).to.equal(devices.find((d) => d.id === t.deviceId)?.received[0]?.claims.seq);
      }
    } finally {
      release();
      await engineA.stop();
      await engineB.stop();
    }
  });

  it('an engine whose own lease lapsed mid-step (no one took over) voids what it sealed, takes the lease again and delivers once', async () => {
    const [d] = (await boards('lapse-1')) as [SimDevice];
    const client = await mqtt.connectAsync(broker.url, { clientId: 'fence-engine-c', clean: true, reconnectPeriod: 0 });
    clients.push(client);
    const r = await startRollout(storageA, await planRollout(storageA, keys, { action: 'selftest', selector: { devices: [d.id] }, ttlSeconds: 120 }));
    let release: () => void = () => undefined;
    const sender = new StallingSender(storageA, keys, client, new Promise<void>((res) => (release = res)), 'none');
    const log = bufferedLogger('info');
    const engine = new RolloutEngine({ storage: storageA, sender, log: log.logger, holder: 'engine-c', tickMs: 50 });
    try {
      engine.start();
      await eventually(() => sender.stalled.size === 1, 5000, 'the engine stalled after sealing');
      skew += LEASE_TTL_MS + 1000;
      release();
      await eventually(
        async () => d.applied.length === 1 && (await storageA.rollouts.counts(r.id)).sent + (await storageA.rollouts.counts(r.id)).applied === 1,
        10_000,
        'delivered after the lease was taken again',
      );
      await sleep(500);
      expect(delivered.get(`provision/${d.id}/command`)).to.equal(1);
      expect(d.received).to.have.length(1);
      const commands = await storageA.commands.list({ fanoutId: r.id });
      expect(commands).to.have.length(2);
      expect(commands.filter((c) => c.voidedAt !== null)).to.have.length(1);
      expect((await storageA.rollouts.targets(r.id))[0]?.jti).to.equal(commands.find((c) => c.voidedAt === null)?.jti);
      expect(log.find(/rollout\.fenced/)).to.be.a('string');
    } finally {
      release();
      await engine.stop();
    }
  });

  it('a rollout cancelled while its commands are sealed publishes none of them: targets cancelled, commands voided, rollout finished', async () => {
    const devices = await boards('stop-1', 'stop-2');
    const client = await mqtt.connectAsync(broker.url, { clientId: 'fence-engine-d', clean: true, reconnectPeriod: 0 });
    clients.push(client);
    const r = await startRollout(
      storageA,
      await planRollout(storageA, keys, { action: 'selftest', selector: { devices: devices.map((d) => d.id) }, ttlSeconds: 120 }),
    );
    let release: () => void = () => undefined;
    const sender = new StallingSender(storageA, keys, client, new Promise<void>((res) => (release = res)), 'stop-1');
    const engine = new RolloutEngine({ storage: storageA, sender, log: silentLogger, holder: 'engine-d', tickMs: 50 });
    try {
      engine.start();
      await eventually(() => sender.stalled.size === 2, 5000, 'the engine stalled with both targets claimed');
      // The operator cancels (another connection, as the CLI or the HTTP API would) while both are being sealed.
      await storageB.rollouts.setState(r.id, ['running'], 'cancelled', 'operator cancel', 'test');
      release();
      await eventually(async () => (await storageA.rollouts.get(r.id))?.finishedAt !== null, 5000, 'the cancelled rollout finished');
      await sleep(300);
      expect(
        sender.publishedTo.filter((id) => id.startsWith('stop-')),
        'publishes after the cancel',
      ).to.deep.equal([]);
      for (const d of devices) {
        expect(delivered.get(`provision/${d.id}/command`) ?? 0, d.id).to.equal(0);
        expect(d.received, d.id).to.have.length(0);
      }
      expect((await storageA.rollouts.targets(r.id)).map((t) => [t.state, t.code])).to.deep.equal([
        ['cancelled', 'E_CANCELLED'],
        ['cancelled', 'E_CANCELLED'],
      ]);
      expect((await storageA.commands.list({ fanoutId: r.id })).every((c) => c.voidedAt !== null)).to.equal(true);
      expect((await storageA.rollouts.get(r.id))?.state).to.equal('cancelled');
    } finally {
      release();
      await engine.stop();
    }
  });

  it('a rollout paused while a command is sealed publishes nothing until resumed, then one command per board', async () => {
    const [d] = (await boards('pause-1')) as [SimDevice];
    const client = await mqtt.connectAsync(broker.url, { clientId: 'fence-engine-e', clean: true, reconnectPeriod: 0 });
    clients.push(client);
    const r = await startRollout(storageA, await planRollout(storageA, keys, { action: 'selftest', selector: { devices: [d.id] }, ttlSeconds: 120 }));
    let release: () => void = () => undefined;
    const sender = new StallingSender(storageA, keys, client, new Promise<void>((res) => (release = res)), 'none');
    const engine = new RolloutEngine({ storage: storageA, sender, log: silentLogger, holder: 'engine-e', tickMs: 50 });
    try {
      engine.start();
      await eventually(() => sender.stalled.size === 1, 5000, 'the engine stalled after sealing');
      await storageB.rollouts.setState(r.id, ['running'], 'paused', 'operator pause', 'test');
      release();
      await eventually(async () => (await storageA.rollouts.counts(r.id)).pending === 1, 5000, 'the target waits again');
      await sleep(300);
      expect(
        sender.publishedTo.filter((id) => id === d.id),
        'publishes while paused',
      ).to.deep.equal([]);
      expect(d.received).to.have.length(0);
      await storageA.rollouts.setState(r.id, ['paused'], 'running', 'operator resume', 'test');
      await eventually(() => d.applied.length === 1, 5000, 'delivered after the resume');
      await sleep(300);
      expect(d.received, 'commands the board got').to.have.length(1);
      const commands = await storageA.commands.list({ fanoutId: r.id });
      expect(commands.filter((c) => c.voidedAt === null).map((c) => c.jti)).to.deep.equal([d.received[0]?.claims.jti]);
    } finally {
      release();
      await engine.stop();
    }
  });

  it('an engine taking over a rollout cancelled since its targets were claimed cancels them (nothing adopted or sent) and finishes it', async () => {
    const devices = await boards('take-1', 'take-2');
    const clientA = await mqtt.connectAsync(broker.url, { clientId: 'fence-engine-f', clean: true, reconnectPeriod: 0 });
    const clientB = await mqtt.connectAsync(broker.url, { clientId: 'fence-engine-g', clean: true, reconnectPeriod: 0 });
    clients.push(clientA, clientB);
    const r = await startRollout(
      storageA,
      await planRollout(storageA, keys, { action: 'selftest', selector: { devices: devices.map((d) => d.id) }, ttlSeconds: 120 }),
    );
    let release: () => void = () => undefined;
    const senderA = new StallingSender(storageA, keys, clientA, new Promise<void>((res) => (release = res)), 'take-1');
    const engineA = new RolloutEngine({ storage: storageA, sender: senderA, log: silentLogger, holder: 'engine-f', tickMs: 50 });
    const senderB = new CommandSender({ storage: storageB, keys, topicPrefix: 'provision', publish: (topic, payload) => publishQos1(clientB, topic, payload) });
    const engineB = new RolloutEngine({ storage: storageB, sender: senderB, log: silentLogger, holder: 'engine-g', tickMs: 50 });
    try {
      engineA.start();
      await eventually(() => senderA.stalled.size === 2, 5000, 'engine A stalled with both targets claimed');
      await storageA.rollouts.setState(r.id, ['running'], 'cancelled', 'operator cancel', 'test');
      skew += LEASE_TTL_MS + 1000;
      engineB.start();
      await eventually(async () => (await storageA.rollouts.get(r.id))?.finishedAt !== null, 5000, 'engine B finished the cancelled rollout');
      release();
      await engineA.idle();
      await sleep(300);
      for (const d of devices) expect(delivered.get(`provision/${d.id}/command`) ?? 0, d.id).to.equal(0);
      expect(senderA.publishedTo.filter((id) => id.startsWith('take-'))).to.deep.equal([]);
      expect((await storageA.rollouts.targets(r.id)).map((t) => t.state)).to.deep.equal(['cancelled', 'cancelled']);
      expect((await storageA.commands.list({ fanoutId: r.id })).every((c) => c.voidedAt !== null)).to.equal(true);
      expect((await storageA.rollouts.get(r.id))?.state).to.equal('cancelled');
    } finally {
      release();
      await engineA.stop();
      await engineB.stop();
    }
  });
});
