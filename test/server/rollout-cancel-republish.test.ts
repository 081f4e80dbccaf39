/**
 * Nothing of a rollout that is not running is published again. A board
 * vanishes without a word (the server still counts it online), its rollout
 * command is sent and expires unanswered; the rollout is cancelled (or
 * paused); the board comes back, without what the broker held for it, and
 * sends its connect report: `serve`'s engine publishes nothing to it (a board
 * without NTP would apply a re-published command). The same for a running
 * rollout re-publishes, as before.
 */
import { expect } from 'chai';
import mqtt, { type MqttClient } from 'mqtt';
import { toPublicJwk } from '../../protocol/index.js';
import type { RolloutRecord } from '../../server/storage/records.js';
import { planRollout, startRollout } from '../../server/rollouts/plan.js';
import { eventually, makeSimDevice, type SimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { everyAsync } from '../helpers/async-array.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('server: a cancelled or paused rollout re-publishes nothing when its board reports in', function () {
  this.timeout(60_000);
  let f: Fixture;
  let watcher: MqttClient;
  const delivered = new Map<string, number>();

  before(async () => {
    f = await startFixture();
    watcher = await mqtt.connectAsync(f.broker.url, { clientId: 'cancel-watcher', clean: true, reconnectPeriod: 0 });
    watcher.on('message', (topic) => delivered.set(topic, (delivered.get(topic) ?? 0) + 1));
    await watcher.subscribeAsync('provision/+/command', { qos: 1 });
  });
  after(async () => {
    await watcher?.endAsync().catch(() => undefined);
    await f?.close();
  });

  it('cancelled and paused: the expired unanswered command is not re-published at the connect report; running: it is', async () => {
    const storage = f.server.data.storage;
    const boards: SimDevice[] = [];
    for (const id of ['away-cancelled', 'away-paused', 'away-running']) {
      const d = f.fleet.add(await makeSimDevice(id));
      await storage.devices.add({
        id,
        userId: 'u1',
        origin: 'jwks',
        signing: toPublicJwk(d.signing),
        encryption: toPublicJwk(d.encryption),
        state: 'provisioned',
      });
      await f.fleet.connectDevice(d, { intervalSeconds: 600 });
      boards.push(d);
    }
    await eventually(
      () => everyAsync(boards, async (d) => (await storage.devices.get(d.id))?.presence.reported === 'online'),
      10_000,
      'the boards online by their reports',
    );
    // Gone without an offline report (power cut, no will yet): the server still counts them online and sends.
    for (const d of boards) await f.fleet.disconnectDevice(d, { clean: false });
    const rollouts: RolloutRecord[] = [];
    for (const d of boards) {
      rollouts.push(
        await startRollout(
          storage,
          await planRollout(storage, f.server.data.keys, { action: 'selftest', selector: { devices: [d.id] }, ttlSeconds: 1, deliverWithinMs: 60_000 }),
        ),
      );
    }
    f.server.rollouts?.kick();
    await eventually(
      () => everyAsync(rollouts, async (r) => (await storage.rollouts.counts(r.id)).sent === 1),
      10_000,
      'each command sent while its board is away',
    );
    const [cancelled, paused, running] = rollouts as [RolloutRecord, RolloutRecord, RolloutRecord];
    await storage.rollouts.setState(cancelled.id, ['running'], 'cancelled', 'test', 'test');
    await storage.rollouts.setState(paused.id, ['running'], 'paused', 'test', 'test');
    // Whole seconds: exp (iat + 1, iat rounded down) has passed for sure after 2.5 s.
    await sleep(2500);
    for (const d of boards) {
      expect(delivered.get(`provision/${d.id}/command`), `${d.id}: the first publish`).to.equal(1);
      // Back without what the broker held (a clean session, or the broker lost it), and reports in.
      d.queued.length = 0;
      await f.fleet.connectDevice(d, { intervalSeconds: 600 });
    }
    await eventually(() => delivered.get('provision/away-running/command') === 2, 10_000, 'the running rollout re-publishing its expired command');
    // Within the board's clock allowance (300 s), that one applies.
    await eventually(async () => (await storage.rollouts.counts(running.id)).applied === 1, 10_000, 'the running rollout applied');
    await sleep(1000);
    expect(delivered.get('provision/away-cancelled/command'), 'publishes for the cancelled rollout').to.equal(1);
    expect(delivered.get('provision/away-paused/command'), 'publishes for the paused rollout').to.equal(1);
    expect(boards[0]?.received).to.have.length(0);
    expect(boards[1]?.received).to.have.length(0);
    expect((await storage.rollouts.require(paused.id)).state).to.equal('paused');
    expect(await storage.rollouts.counts(cancelled.id)).to.include({ sent: 1 });
  });
});
