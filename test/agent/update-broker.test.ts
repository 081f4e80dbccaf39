/**
 * `update` with new broker settings (apply-update.ts), over real brokers
 * (two aedes in process): to an unreachable broker the agent rolls the whole
 * update back after `rollback_timeout_s` (5 s, the protocol's minimum),
 * reconnects to the original broker and acks `failed` / E_BROKER_ROLLBACK
 * there; to a reachable second broker it switches, acks `applied` there, the
 * state records it, and commands arrive there.
 */
import { expect } from 'chai';
import { startAgent, type RunningAgent } from '../../agent/agent.js';
import { bufferedLogger } from '../../lib/log.js';
import { freePort, startAedes, type AedesBroker } from '../helpers/brokers.js';
import { makeParty, type Party } from '../helpers/keys.js';
import { showAgentLogOnFailure, makeDevice, readDeviceState, removeDir, TestServer, type DeviceFiles } from './agent-fixture.js';

interface DeviceState {
  settings: { broker?: { url: string }; reporting?: unknown };
  user_id: string | null;
  pending_broker: unknown;
  last_seq: number;
  recent: RecentRecord[];
}

async function state(files: DeviceFiles): Promise<DeviceState> {
  return readDeviceState(files);
}

interface RecentRecord {
  jti: string;
  status: string;
  code: string;
  detail: string;
}

/** Connected and subscribed (a QoS 1 command sent to a session that has not subscribed yet is not queued). */
async function ready(agent: RunningAgent): Promise<void> {
  if (!agent.connected) await new Promise<void>((r) => agent.once('ready', () => r()));
}

describe('agent update: broker change with automatic rollback (aedes)', function () {
  this.timeout(30_000);
  const logs = bufferedLogger('debug');
  const deviceId = 'board-broker';
  let brokerA: AedesBroker;
  let brokerB: AedesBroker | undefined;
  let party: Party;
  let server: TestServer;
  let serverB: TestServer | undefined;
  let files: DeviceFiles;
  let agent: RunningAgent | undefined;

  before(async function () {
    brokerA = await startAedes();
    party = await makeParty();
    server = new TestServer(party, brokerA.url);
    await server.connect();
    files = await makeDevice({ deviceId, brokerUrl: brokerA.url, server: party, keys: true });
    await server.registerFromKeystore(deviceId, files.keystore);
    agent = await startAgent({ configPath: files.configPath, log: logs.logger, backoff: { minMs: 50, maxMs: 400 } });
    await ready(agent);
    const ack = await server.command(deviceId, 'request', {}, { userId: 'alice' });
    expect(ack.claims.status, ack.claims.detail).to.equal('applied');
  });

  showAgentLogOnFailure(logs);

  after(async function () {
    await agent?.stop();
    await serverB?.close();
    await server?.close();
    await brokerB?.stop();
    await brokerA?.stop();
    if (files) await removeDir(files.dir);
  });

  it('to an unreachable broker: rolls the whole update back, reconnects to the original broker, acks failed E_BROKER_ROLLBACK', async function () {
    const dead = `mqtt://127.0.0.1:${await freePort()}`; // nothing listens there
    const before = await state(files);
    const params = { user_id: 'mallory', reporting: { interval_s: 77 }, broker: { url: dead }, rollback_timeout_s: 5 };
    const sealed = await server.seal(deviceId, 'update', params);
    // The failed ack is sent after the rollback (5 s), on the original broker.
    const wait = server.waitAck((a) => a.claims.ref === sealed.jti, 15_000);
    await server.publish(deviceId, sealed.token);
    const ack = await wait;
    expect(ack.claims.status).to.equal('failed');
    expect(ack.claims.code).to.equal('E_BROKER_ROLLBACK');
    expect(ack.claims.detail).to.include(`could not connect to ${dead} within 5 s`);
    expect(ack.claims.detail).to.include(`rolled back to ${brokerA.url}`);
    // It did try the new broker before giving up.
    expect(logs.find(new RegExp(`switching broker.*${dead.replace(/[.:/]/g, '\\$&')}`))).to.be.a('string');

    const st = await state(files);
    expect(st.settings).to.deep.equal(before.settings); // no broker, no reporting change
    expect(st.settings.broker).to.equal(undefined);
    expect(st.user_id).to.equal('alice');
    expect(st.pending_broker).to.equal(null);
    expect(st.last_seq).to.equal(ack.claims.seq); // the seq is used up even though the update was rolled back
    const rec = st.recent.find((r) => r.jti === ack.claims.ref);
    expect(rec?.status).to.equal('failed');
    expect(rec?.code).to.equal('E_BROKER_ROLLBACK');

    // Back on the original broker and taking commands there.
    expect(agent?.connected).to.equal(true);
    const probe = await server.command(deviceId, 'update', { reporting: { interval_s: 30 } });
    expect(probe.claims.status, probe.claims.detail).to.equal('applied');
    expect((await state(files)).settings).to.deep.equal({ reporting: { interval_s: 30 } });
  });

  it('to a reachable second broker: switches, acks applied there, records it, and takes commands there', async function () {
    brokerB = await startAedes();
    serverB = new TestServer(party, brokerB.url);
    await serverB.connect();
    serverB.devices.set(deviceId, server.devices.get(deviceId)!);
    const seal = await server.seal(deviceId, 'update', { broker: { url: brokerB.url }, rollback_timeout_s: 5 });
    serverB.seq.set(deviceId, seal.seq);
    const onB = serverB.waitAck((a) => a.claims.ref === seal.jti);
    await server.publish(deviceId, seal.token);
    const ack = await onB;
    expect(ack.claims.status, ack.claims.detail).to.equal('applied');
    expect(ack.claims.detail).to.include(`now connected to ${brokerB.url}`);
    // The ack went to the new broker only.
    expect(server.acks.some((a) => a.claims.ref === seal.jti)).to.equal(false);

    const st = await state(files);
    expect(st.settings.broker).to.deep.equal({ url: brokerB.url });
    expect(st.pending_broker).to.equal(null);
    expect(st.last_seq).to.equal(seal.seq);

    const probe = await serverB.command(deviceId, 'update', { reporting: { interval_s: 60 } });
    expect(probe.claims.status, probe.claims.detail).to.equal('applied');
    expect((await state(files)).settings.reporting).to.deep.equal({ interval_s: 60 });

    // A restart keeps the new broker (the state's settings override the config file's).
    await agent!.stop();
    agent = await startAgent({ configPath: files.configPath, log: logs.logger, backoff: { minMs: 50, maxMs: 400 } });
    await ready(agent);
    const again = await serverB.command(deviceId, 'selftest');
    expect(again.claims.status).to.equal('applied');
  });
});
