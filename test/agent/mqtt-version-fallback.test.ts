/**
 * A board bundled for MQTT 5 (the bundle's default) whose broker speaks MQTT
 * 3.1.1 only (aedes 1.x, as mosquitto before 1.6): the broker refuses the
 * CONNECT (CONNACK 1, unacceptable protocol version); the agent says so, goes
 * on with 3.1.1 and enrolls, rather than retrying MQTT 5 for ever.
 */
import { expect } from 'chai';
import { startAgent, type RunningAgent } from '../../agent/agent.js';
import { bufferedLogger } from '../../lib/log.js';
import { startAedes, type AedesBroker } from '../helpers/brokers.js';
import { startWithFakeGpio } from '../helpers/fake-gpio.js';
import { makeParty } from '../helpers/keys.js';
import { makeDevice, readDeviceState, removeDir, showAgentLogOnFailure, TestServer, type DeviceFiles } from './agent-fixture.js';

describe('agent: MQTT 5 configured, the broker speaks 3.1.1 only (aedes)', function () {
  this.timeout(20_000);
  let broker: AedesBroker;
  let server: TestServer;
  let files: DeviceFiles;
  let agent: RunningAgent | undefined;
  const logs = bufferedLogger('debug');
  showAgentLogOnFailure(logs);

  before(async () => {
    broker = await startAedes();
    const party = await makeParty();
    server = new TestServer(party, broker.url, undefined);
    await server.connect();
    files = await makeDevice({
      deviceId: 'board-v5',
      brokerUrl: broker.url,
      server: party,
      token: 'tok-v5',
      extra: { broker: { url: broker.url, protocol_version: 5 } },
    });
  });

  after(async () => {
    await agent?.stop();
    await server?.close();
    await broker?.stop();
    if (files) await removeDir(files.dir);
  });

  it('falls back to MQTT 3.1.1 with a warning and enrolls', async () => {
    server.expectEnrollment('board-v5', 'tok-v5', 'alice');
    agent = await startWithFakeGpio(
      { configPath: files.configPath, log: logs.logger, backoff: { minMs: 50, maxMs: 500 }, enrollment: { retryMinMs: 2000 } },
      startAgent,
    );
    const ack = await server.waitAck((a) => a.claims.iss === 'board-v5');
    expect(ack.claims.status).to.equal('applied');
    expect((await readDeviceState(files)).provisioned).to.equal(true);
    expect(logs.lines.filter((l) => l.includes('does not speak MQTT 5'))).to.have.length(1);
  });
});
