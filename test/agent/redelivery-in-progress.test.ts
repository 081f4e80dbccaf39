/**
 * A command redelivered while its first copy is still being processed (over
 * aedes): the connection drops while the command's hook runs, the agent
 * reconnects, and the broker redelivers the command it has no PUBACK for.
 * The copy must wait for the first one and be answered as a duplicate: the
 * hook runs once, one applied ack, the action applied once.
 */
import { expect } from 'chai';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type RunningAgent } from '../../agent/agent.js';
import { bufferedLogger } from '../../lib/log.js';
import { makeDevice, readDeviceState, useAedesSuite, waitFor, type DeviceFiles } from './agent-fixture.js';

const logs = bufferedLogger('debug');

async function lines(path: string): Promise<string[]> {
  try {
    return (await readFile(path, 'utf8')).split('\n').filter((l) => l !== '');
  } catch {
    return [];
  }
}

describe('agent: a command redelivered after a reconnect while its first copy still runs (aedes)', function () {
  this.timeout(30_000);
  const s = useAedesSuite(logs);

  async function provisioned(deviceId: string): Promise<{ files: DeviceFiles; agent: RunningAgent }> {
    const files = await makeDevice({ deviceId, brokerUrl: s.broker.url, server: s.party, keys: true, extra: { hook_timeout_s: 20 } });
    s.dirs.push(files.dir);
    await s.server.registerFromKeystore(deviceId, files.keystore);
    const agent = await startAgent({ configPath: files.configPath, log: logs.logger, backoff: { minMs: 50, maxMs: 200 } });
    s.running.add(agent);
    if (!agent.connected) await new Promise<void>((r) => agent.once('ready', () => r()));
    expect((await s.server.command(deviceId, 'request', {}, { userId: 'alice' })).claims.status).to.equal('applied');
    return { files, agent };
  }

  it('update whose hook is still running when the connection drops: the redelivered copy waits, is answered as a duplicate; hook ran once, one applied ack', async function () {
    const deviceId = 'redeliv-1';
    const { files, agent } = await provisioned(deviceId);
    const runs = join(files.dir, 'update-runs');
    const release = join(files.dir, 'release');
    // The hook records each run, then holds the command until the test releases it.
    await writeFile(join(files.hooksDir, 'update'), `#!/bin/sh\necho "$SENSOR_AGENT_SEQ" >> "${runs}"\nwhile [ ! -e "${release}" ]; do sleep 0.05; done\n`);
    await chmod(join(files.hooksDir, 'update'), 0o755);

    const sealed = await s.server.seal(deviceId, 'update', { user_id: 'bob' });
    const seen = s.server.acks.length;
    const logged = logs.lines.length;
    await s.server.publish(deviceId, sealed.token);
    await waitFor('the update hook to start', async () => (await lines(runs)).length === 1);

    // The network drops under the running command; the agent reconnects and the broker redelivers it.
    expect(s.broker.dropClient(deviceId), 'the agent was connected').to.equal(true);
    await waitFor(
      'the redelivered copy to reach the agent (run its hook again, or wait its turn)',
      async () => (await lines(runs)).length >= 2 || logs.lines.slice(logged).some((l) => l.includes('waits for the command in progress')),
      10_000,
    );
    await writeFile(release, '');

    const ours = (): typeof s.server.acks => s.server.acks.slice(seen).filter((a) => a.claims.ref === sealed.jti);
    await waitFor('an ack for both copies', () => ours().length >= 2, 10_000);
    // The agent works on: the next command is processed after both copies.
    expect((await s.server.command(deviceId, 'selftest')).claims.status).to.equal('applied');

    expect(await lines(runs), 'hook runs').to.deep.equal([String(sealed.seq)]);
    const fresh = ours().filter((a) => !/^duplicate:/.test(a.claims.detail ?? ''));
    expect(
      fresh.map((a) => a.claims.status),
      'acks that are not duplicates',
    ).to.deep.equal(['applied']);
    expect(ours().every((a) => a.claims.status === 'applied')).to.equal(true);
    const st = await readDeviceState(files);
    expect(st.user_id).to.equal('bob');
    expect((st.recent as { jti: string }[]).filter((r) => r.jti === sealed.jti)).to.have.length(1);
    expect(agent.connected).to.equal(true);
  });
});
