/**
 * Re-sends after `E_EXPIRED` are capped and backed off: a board that refuses
 * every command as expired (its clock runs ahead, or it lies) gets at most
 * MAX_SEND_ATTEMPTS commands, none before its backoff has passed, and its
 * target ends `failed` E_EXPIRED_REPEATEDLY. A `serve` without an engine
 * (real broker, aedes) records the board's acks; the engine runs over a
 * second connection to the same registry whose clock the test moves.
 */
import { expect } from 'chai';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { bufferedLogger } from '../../lib/log.js';
import { toPublicJwk } from '../../protocol/index.js';
import { CommandSender } from '../../server/core/command-sender.js';
import { publishQos1 } from '../../server/core/mqtt-connection.js';
import { openSqliteStorage, type SqliteStorage } from '../../server/storage/sqlite/index.js';
import { E_EXPIRED_REPEATEDLY, MAX_SEND_ATTEMPTS, RolloutEngine, resendBackoffMs } from '../../server/rollouts/engine.js';
import { planRollout, startRollout } from '../../server/rollouts/plan.js';
import { eventually, makeSimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('server: rollout re-sends after E_EXPIRED are capped and backed off', function () {
  this.timeout(60_000);
  let f: Fixture;
  let storage: SqliteStorage;
  let client: MqttClient;

  before(async () => {
    f = await startFixture({ rollouts: false });
  });
  after(async () => {
    await client?.endAsync().catch(() => undefined);
    await storage?.close();
    await f?.close();
  });

  it('a board that always answers E_EXPIRED gets at most the cap of commands, spaced by the backoff, and ends failed E_EXPIRED_REPEATEDLY', async () => {
    let skew = 0;
    storage = openSqliteStorage(join(f.dataDir, 'registry.sqlite'), { now: () => Date.now() + skew });
    const keys = f.server.data.keys;
    const d = f.fleet.add(await makeSimDevice('clock-ahead'));
    d.refuseUnrecorded = 'E_EXPIRED';
    await storage.devices.add({
      id: d.id,
      userId: 'u1',
      origin: 'jwks',
      signing: toPublicJwk(d.signing),
      encryption: toPublicJwk(d.encryption),
      state: 'provisioned',
    });
    client = await mqtt.connectAsync(f.broker.url, { clientId: 'resend-engine', clean: true, reconnectPeriod: 0 });
    const sender = new CommandSender({ storage, keys, topicPrefix: 'provision', publish: (topic, payload) => publishQos1(client, topic, payload) });
    const log = bufferedLogger('info');
    const engine = new RolloutEngine({ storage, sender, log: log.logger, tickMs: 50 });
    const r = await startRollout(
      storage,
      await planRollout(storage, keys, { action: 'selftest', selector: { devices: [d.id] }, ttlSeconds: 60, deliverWithinMs: 3600_000 }),
    );
    const refused = async (): Promise<number> => (await storage.commands.list({ fanoutId: r.id })).filter((c) => c.ackCode === 'E_EXPIRED').length;
    engine.start();
    try {
      for (let n = 1; n < MAX_SEND_ATTEMPTS; n++) {
        await eventually(async () => (await refused()) >= n, 10_000, `refusal ${n} recorded`);
        // Within the backoff nothing more is sealed, however often the engine steps.
        await sleep(600);
        expect(d.received.length, `commands before backoff ${n} passed`).to.equal(n);
        expect((await storage.rollouts.targets(r.id))[0]).to.include({ state: 'pending', code: 'E_EXPIRED' });
        skew += resendBackoffMs(n);
        await eventually(() => d.received.length === n + 1, 10_000, `re-send ${n} after its backoff`);
      }
      await eventually(async () => (await storage.rollouts.targets(r.id))[0]?.state === 'failed', 10_000, 'the target failed');
      // Much later, still nothing more.
      skew += 3600_000 - 60_000;
      await sleep(600);
      expect(d.received).to.have.length(MAX_SEND_ATTEMPTS);
      const commands = (await storage.commands.list({ fanoutId: r.id })).sort((a, b) => a.seq - b.seq);
      expect(commands).to.have.length(MAX_SEND_ATTEMPTS);
      for (let i = 1; i < commands.length; i++) {
        const gap = (commands[i]?.createdAt as number) - (commands[i - 1]?.createdAt as number);
        expect(gap, `gap before command ${i + 1}`).to.be.at.least(resendBackoffMs(i));
      }
      expect((await storage.rollouts.targets(r.id))[0]).to.include({ state: 'failed', code: E_EXPIRED_REPEATEDLY, attempts: MAX_SEND_ATTEMPTS });
      expect((await storage.rollouts.require(r.id)).state).to.equal('completed');
      expect(log.find(/rollout\.target_failed .*E_EXPIRED_REPEATEDLY.*check its clock/)).to.be.a('string');
    } finally {
      await engine.stop();
    }
  });
});
