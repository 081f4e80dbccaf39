/**
 * One huge publish to a running `sensor-agent run` (issue 10, finding 7),
 * over aedes with the attacker another client publishing 80 MB on the
 * device's command topic (the broker forwards it; a hostile broker could
 * send it itself). The agent must refuse the packet from its fixed header,
 * before mqtt.js buffers it: its peak resident set (VmHWM) grows by far less
 * than the packet, it says why and drops the connection, reconnects, and
 * still applies a normal command.
 */
import { expect } from 'chai';
import { readFile } from 'node:fs/promises';
import mqtt from 'mqtt';
import { commandTopic } from '../../protocol/index.js';
import { spawnAgent } from '../helpers/agent-process.js';
import { PREFIX, useAgentProcessSuite, waitFor } from '../agent/agent-fixture.js';

const DEVICE = 'sensor-bigpacket';
const MB = 1024 * 1024;

async function peakRss(pid: number): Promise<number> {
  const m = /VmHWM:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmHWM for pid ${pid}`);
  return Number(m[1]) * 1024;
}

describe('faults: an oversized MQTT packet is refused before it is buffered', function () {
  this.timeout(90_000);
  const s = useAgentProcessSuite(DEVICE, 'SIGTERM');

  it('two 80 MB publishes (before and after a reconnect): peak RSS grows by < 24 MB, clear log, connection dropped and re-established, commands still applied', async function () {
    s.agent = spawnAgent(s.files.configPath);
    const subscriptions = (): number =>
      s
        .agent!.output()
        .split('\n')
        .filter((l) => l.includes('subscribed topic=')).length;
    await waitFor('the agent to subscribe', () => subscriptions() >= 1, 20_000);
    expect((await s.server.command(DEVICE, 'request', {}, { userId: 'alice' })).claims.status).to.equal('applied');
    const before = await peakRss(s.agent.pid);

    const refusals = (): number =>
      s
        .agent!.output()
        .split('\n')
        .filter((l) => l.includes('oversized MQTT packet refused')).length;
    const attacker = await mqtt.connectAsync(s.broker.url, { clientId: 'attacker', reconnectPeriod: 0 });
    await attacker.publishAsync(commandTopic(PREFIX, DEVICE), Buffer.alloc(80 * MB, 0x41), { qos: 0 });
    await waitFor('the refusal in the log', () => refusals() >= 1, 30_000);
    await waitFor('the agent to reconnect', () => subscriptions() >= 2, 30_000);
    // The connection made by the reconnect is capped too.
    await attacker.publishAsync(commandTopic(PREFIX, DEVICE), Buffer.alloc(80 * MB, 0x42), { qos: 0 });
    await attacker.endAsync();
    await waitFor('the second refusal in the log', () => refusals() >= 2, 30_000);
    await waitFor('the agent to reconnect again', () => subscriptions() >= 3, 30_000);
    const growth = ((await peakRss(s.agent.pid)) - before) / MB;
    process.stderr.write(`      peak RSS growth over two 80 MB publishes: ${growth.toFixed(1)} MB\n`);
    expect(growth, 'peak RSS growth (MB)').to.be.below(24);
    expect(s.agent.output()).to.match(/oversized MQTT packet refused before buffering it; connection dropped, reconnecting .*declared_bytes=83886\d\d/);
    expect(s.agent.running()).to.equal(true);
    expect((await s.server.command(DEVICE, 'update', { sensor: { sample_interval_s: 42 } })).claims.status).to.equal('applied');
  });
});
