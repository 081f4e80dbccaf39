/**
 * The bundled agent (as on a board) against `serve` over mosquitto: a restarted agent connects
 * with the first will its previous run sealed ahead (next-will.json), applies an update on that
 * connection, and is killed. The broker then publishes that will, sealed before the update: the
 * board is offline, but its reported last_seq and settings stay those of the update.
 */
import { expect } from 'chai';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { toPublicJwk } from '../../protocol/index.js';
import { KeyStore } from '../../agent/store/keystore.js';
import { NEXT_WILL_FILE } from '../../agent/net/reporter.js';
import { initDataDir } from '../../server/data-dir.js';
import { startProvisionServer, type RunningServer } from '../../server/service.js';
import { spawnAgent, type AgentProcess } from '../helpers/agent-process.js';
import { shouldRunMosquitto, startMosquitto } from '../helpers/brokers.js';
import { NO_MOSQUITTO, skipBecause } from '../helpers/skip.js';
import { exists, makeDevice, removeDir, waitFor } from './agent-fixture.js';

describe('agent and serve: a will sealed ahead, before its connection applied an update', function () {
  this.timeout(60_000);
  const cleanups: (() => Promise<unknown>)[] = [];
  after(async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  });

  it('takes back neither last_seq nor the settings digest when the broker publishes it', async function () {
    if (!(await shouldRunMosquitto())) skipBecause(this, NO_MOSQUITTO);
    const broker = await startMosquitto();
    cleanups.push(() => broker.stop());
    const dir = await mkdtemp(join(tmpdir(), 'stale-will-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const dataDir = join(dir, 'data');
    await initDataDir(dataDir, { broker: { url: broker.url } });
    const server: RunningServer = await startProvisionServer({ dataDir, shared: 'off', clientId: 'stale-will-server' });
    cleanups.push(() => server.close());
    const storage = server.data.storage;

    const deviceId = 'stale-will-board';
    const files = await makeDevice({ deviceId, brokerUrl: broker.url, server: server.data.keys, keys: true, extra: { report_interval_s: 600 } });
    cleanups.push(() => removeDir(files.dir));
    const ks = await KeyStore.open(files.keystore);
    await storage.devices.add({
      id: deviceId,
      userId: 'alice',
      origin: 'jwks',
      signing: toPublicJwk(ks.signingKey!),
      encryption: toPublicJwk(ks.encryptionKey!),
    });
    const start = (): AgentProcess => {
      const agent = spawnAgent(files.configPath);
      cleanups.push(async () => {
        if (agent.running()) agent.child.kill('SIGKILL');
        await agent.exited;
      });
      return agent;
    };
    const presence = async () => (await storage.devices.require(deviceId)).presence;
    const apply = async (req: Parameters<RunningServer['send']>[0]): Promise<void> => {
      const c = await server.send(req);
      expect((await server.waitForAck(c.jti, 15_000))?.ackStatus).to.equal('applied');
    };

    // Run 1: provisioned; it seals run 2's first will ahead.
    const run1 = start();
    await waitFor('run 1 online', async () => (await presence()).reported === 'online', 15_000);
    await apply({ deviceId, action: 'request', userId: 'alice' });
    await waitFor('the request reported', async () => (await presence()).state?.last_seq === 1, 15_000);
    const nextWill = join(files.stateDir, NEXT_WILL_FILE);
    await waitFor(
      'next-will.json for run 2',
      async () => (await exists(nextWill)) && (JSON.parse(await readFile(nextWill, 'utf8')) as { run: number }).run === 2,
      15_000,
    );
    const session1 = (await presence()).session;
    run1.child.kill('SIGTERM');
    expect(await run1.exited).to.equal(0);

    // Run 2 connects with that will, then applies an update: its report says last_seq 2, new settings.
    const run2 = start();
    await waitFor('run 2 online', async () => (await presence()).reported === 'online' && (await presence()).session !== session1, 15_000);
    const before = (await presence()).state?.settings_digest;
    await apply({ deviceId, action: 'update', params: { sensor: { sample_interval_s: 45 } } });
    await waitFor('the update reported', async () => (await presence()).state?.last_seq === 2, 15_000);
    const updated = (await presence()).state?.settings_digest;
    expect(updated).to.not.equal(before);

    // Killed: the broker publishes the will run 1 sealed (last_seq 1, the old settings).
    run2.child.kill('SIGKILL');
    await run2.exited;
    await waitFor('offline by its will', async () => (await presence()).reported === 'offline', 15_000);
    expect((await presence()).state).to.include({ reason: 'offline', last_seq: 2, settings_digest: updated });
  });
});
