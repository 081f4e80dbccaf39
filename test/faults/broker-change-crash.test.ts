/**
 * A real SIGKILL of `sensor-agent run` while it switches to the broker an
 * `update` named (issue 10, finding 3). The update changed the user and the
 * settings too; the new broker cannot be reached. After the restart the agent
 * resumes the switch, gives up after `rollback_timeout_s` and must roll the
 * WHOLE update back (user, settings, broker), not only the broker, then ack
 * `failed` E_BROKER_ROLLBACK on the original broker (aedes, in this process).
 */
import { expect } from 'chai';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort } from '../helpers/brokers.js';
import { spawnAgent, type AgentProcess } from '../helpers/agent-process.js';
import { readDeviceState, useAgentProcessSuite, waitFor } from '../agent/agent-fixture.js';

const DEVICE = 'sensor-switch-crash';

describe('faults: SIGKILL during a broker change rolls the whole update back', function () {
  this.timeout(60_000);
  const s = useAgentProcessSuite(DEVICE, 'SIGKILL');

  async function run(): Promise<AgentProcess> {
    const a = spawnAgent(s.files.configPath);
    await waitFor(
      'the agent to subscribe',
      () => {
        if (!a.running()) throw new Error(`agent exited: ${a.output()}`);
        return a.output().includes('subscribed topic=');
      },
      20_000,
    );
    return a;
  }

  it('user, settings and broker are all restored after the restart; failed E_BROKER_ROLLBACK is acked', async function () {
    s.agent = await run();
    expect((await s.server.command(DEVICE, 'request', {}, { userId: 'alice' })).claims.status).to.equal('applied');
    expect((await s.server.command(DEVICE, 'update', { sensor: { name: 'before', sample_interval_s: 60 } })).claims.status).to.equal('applied');
    const before = await readDeviceState(s.files);

    const nowhere = `mqtt://127.0.0.1:${await freePort()}`;
    const update = await s.server.seal(DEVICE, 'update', {
      user_id: 'mallory',
      sensor: { name: 'after', sample_interval_s: 5 },
      broker: { url: nowhere },
      rollback_timeout_s: 30,
    });
    await s.server.publish(DEVICE, update.token);
    await waitFor('the switch to start', () => s.agent!.output().includes('switching broker'), 10_000);
    const mid = await readDeviceState(s.files);
    expect(mid.user_id).to.equal('mallory');
    expect(mid.pending_broker).to.not.equal(null);

    s.agent.child.kill('SIGKILL');
    expect(await s.agent.exited).to.equal('SIGKILL');

    // Restart: the switch resumes, cannot reach the broker, and gives up after rollback_timeout_s; shorten it for the test.
    const st = await readDeviceState(s.files);
    const pending = st.pending_broker as { rollback_timeout_s: number };
    pending.rollback_timeout_s = 5;
    await writeFile(join(s.files.stateDir, 'state.json'), `${JSON.stringify(st, null, 1)}\n`, { mode: 0o600 });
    s.agent = spawnAgent(s.files.configPath);
    const ack = await s.server.waitAck((a) => a.claims.ref === update.jti, 30_000);
    expect([ack.claims.status, ack.claims.code]).to.deep.equal(['failed', 'E_BROKER_ROLLBACK']);

    const after = await readDeviceState(s.files);
    expect(after.user_id, 'user after the rollback').to.equal('alice');
    expect(after.settings, 'settings after the rollback').to.deep.equal(before.settings);
    expect(after.pending_broker).to.equal(null);
    // Managed on the original broker again.
    expect((await s.server.command(DEVICE, 'selftest')).claims.status).to.equal('applied');
  });
});
