/**
 * One oversized QoS 1 command (issue 26) over a real mosquitto with the bundle's old defaults:
 * MQTT 3.1.1 and no `max_packet_size`, persistent sessions. Another client publishes 10 MB at QoS 1
 * to a provisioned agent's command topic, then the server a valid sealed command. The broker keeps
 * re-sending the big one at every reconnect until it is acknowledged: the agent must drop it
 * (logged as `command.oversize_dropped` with topic, size and limit, not blamed on the ACL) and apply
 * the valid command within a bounded time. With MQTT 5 the agent's Maximum Packet Size is in its
 * CONNECT and the broker never sends the big one.
 */
import { expect } from 'chai';
import mqtt from 'mqtt';
import { commandTopic } from '../../protocol/index.js';
import { startAgent, type RunningAgent } from '../../agent/agent.js';
import { MAX_INBOUND_PACKET_BYTES } from '../../agent/net/packet-cap.js';
import { bufferedLogger } from '../../lib/log.js';
import { mosquittoAvailable, startMosquittoProcess, type MosquittoProcess } from '../helpers/mosquitto-process.js';
import { makeParty, type Party } from '../helpers/keys.js';
import { NO_MOSQUITTO, skipBecause } from '../helpers/skip.js';
import { makeDevice, PREFIX, readDeviceState, removeDir, showAgentLogOnFailure, TestServer } from '../agent/agent-fixture.js';

const MB = 1024 * 1024;

describe('faults: one oversized QoS 1 command does not wedge the agent (mosquitto, persistent session, no max_packet_size)', function () {
  this.timeout(60_000);
  const logs = bufferedLogger('debug');
  showAgentLogOnFailure(logs);
  let broker: MosquittoProcess;
  let party: Party;
  let server: TestServer;
  const dirs: string[] = [];
  const agents: RunningAgent[] = [];

  before(async function () {
    if (!mosquittoAvailable()) skipBecause(this, NO_MOSQUITTO);
    broker = await startMosquittoProcess({ persistence: true });
    party = await makeParty();
    server = new TestServer(party, broker.url);
    await server.connect();
  });

  afterEach(async () => {
    for (const a of agents.splice(0)) await a.stop();
  });

  after(async () => {
    await server?.close();
    await broker?.close();
    for (const d of dirs) await removeDir(d);
  });

  async function provisioned(deviceId: string, protocolVersion: 4 | 5): Promise<Awaited<ReturnType<typeof makeDevice>>> {
    const files = await makeDevice({
      deviceId,
      brokerUrl: broker.url,
      server: party,
      keys: true,
      extra: { broker: { url: broker.url, protocol_version: protocolVersion } },
    });
    dirs.push(files.dir);
    await server.registerFromKeystore(deviceId, files.keystore);
    const agent = await startAgent({ configPath: files.configPath, log: logs.logger, backoff: { minMs: 50, maxMs: 400 } });
    agents.push(agent);
    if (!agent.connected) await new Promise<void>((r) => agent.once('ready', () => r()));
    expect((await server.command(deviceId, 'request', {}, { userId: 'alice' })).claims.status).to.equal('applied');
    return files;
  }

  async function publishBig(deviceId: string, protocolVersion: 4 | 5): Promise<void> {
    const attacker = await mqtt.connectAsync(broker.url, { clientId: `attacker-${deviceId}`, protocolVersion, reconnectPeriod: 0 });
    await attacker.publishAsync(commandTopic(PREFIX, deviceId), Buffer.alloc(10 * MB, 0x41), { qos: 1 });
    await attacker.endAsync();
  }

  it('MQTT 3.1.1: the 10 MB command is dropped and logged (topic, size, limit; not the ACL), the valid command after it is applied', async function () {
    const deviceId = 'sensor-oversize-311';
    const files = await provisioned(deviceId, 4);
    const seen = logs.lines.length;
    await publishBig(deviceId, 4);
    const ack = await server.command(deviceId, 'update', { sensor: { sample_interval_s: 42 } });
    expect(ack.claims.status).to.equal('applied');
    expect((await readDeviceState(files)).settings.sensor?.sample_interval_s).to.equal(42);
    const out = logs.lines.slice(seen);
    const dropped = out.find((l) => l.includes('command.oversize_dropped'));
    expect(dropped, 'no command.oversize_dropped line').to.be.a('string');
    expect(dropped).to.match(/^ERROR /);
    expect(dropped).to.include(`topic=${commandTopic(PREFIX, deviceId)}`);
    expect(dropped).to.match(/ bytes=1048\d{4} /);
    expect(dropped).to.include(`limit_bytes=${MAX_INBOUND_PACKET_BYTES}`);
    expect(dropped).to.match(/a command may have been lost/);
    expect(out.join('\n')).to.not.match(/ACL/);
  });

  it('MQTT 5: the Maximum Packet Size is announced, the broker never delivers the 10 MB command; the valid one is applied', async function () {
    const deviceId = 'sensor-oversize-v5';
    await provisioned(deviceId, 5);
    const seen = logs.lines.length;
    await publishBig(deviceId, 5);
    expect((await server.command(deviceId, 'update', { sensor: { sample_interval_s: 43 } })).claims.status).to.equal('applied');
    expect(
      logs.lines.slice(seen).filter((l) => /oversize|disconnected from broker/.test(l)),
      'the broker sent the big one',
    ).to.deep.equal([]);
  });
});
