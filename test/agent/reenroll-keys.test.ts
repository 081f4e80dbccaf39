/**
 * A decommissioned board that gets a new enrollment token starts a new
 * identity: new keys, then a fresh state (over aedes, with the attacker the
 * broker or a client replaying captured bytes). Its old keys may still be
 * there: a power cut during `delete` after the state was saved and before
 * the wipe (and the PUBACK), or keys supplied by systemd credentials, which
 * the wipe cannot remove. With the old keys and a state reset to seq 0, the
 * broker's redelivery of the un-acked delete would wipe the re-enrolled
 * board and captured commands would apply again.
 */
import { expect } from 'chai';
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decommission } from '../../agent/actions/delete.js';
import type { RunningAgent } from '../../agent/agent.js';
import { KeyStore } from '../../agent/store/keystore.js';
import { bufferedLogger } from '../../lib/log.js';
import { recordCommand, type AgentState } from '../../agent/store/state.js';
import {
  addSuiteDevice,
  exists,
  readDeviceState,
  startRefusal,
  startSuiteAgent,
  stopSuiteAgent,
  useAedesSuite,
  waitFor,
  type DeviceFiles,
  type StartRefusal,
} from './agent-fixture.js';
import { agentExitStatus } from '../../agent/commands/exit-statuses.js';

const logs = bufferedLogger('debug');

describe('agent: a decommissioned board re-enrolls with new keys, never with its old ones at seq 0 (aedes)', function () {
  this.timeout(30_000);
  const s = useAedesSuite(logs);

  async function start(files: DeviceFiles): Promise<RunningAgent> {
    return startSuiteAgent(s, { configPath: files.configPath, log: logs.logger, backoff: { minMs: 50, maxMs: 400 } });
  }

  /**
   * Provisioned for alice and updated to bob (bytes captured), then a delete sealed and "applied" up to
   * its state save only: the state a power cut leaves between the save and the wipe, keys still there.
   */
  async function interruptedDelete(
    deviceId: string,
  ): Promise<{ files: DeviceFiles; update: { token: string; jti: string }; del: { token: string; jti: string }; oldKids: string[] }> {
    const files = await addSuiteDevice(s, deviceId);
    const agent = await start(files);
    expect((await s.server.command(deviceId, 'request', {}, { userId: 'alice' })).claims.status).to.equal('applied');
    const update = await s.server.commandCaptured(deviceId, 'update', { user_id: 'bob' });
    expect(update.ack.claims.status).to.equal('applied');
    await stopSuiteAgent(s, agent);

    const del = await s.server.seal(deviceId, 'delete');
    const path = join(files.stateDir, 'state.json');
    const st = JSON.parse(await readFile(path, 'utf8')) as AgentState;
    // What the pipeline saves for an applied delete, before wipeDevice runs.
    decommission(st);
    recordCommand(st, {
      jti: del.jti,
      seq: del.seq,
      action: 'delete',
      status: 'applied',
      code: 'OK',
      detail: 'decommissioned',
      at: Math.floor(Date.now() / 1000),
    });
    await writeFile(path, JSON.stringify(st), { mode: 0o600 });
    const oldKids = (await KeyStore.open(files.keystore)).publicKeys().keys.map((k) => k.kid);
    return { files, update, del, oldKids };
  }

  it('power cut during delete before the wipe, then a new token: new keys; the redelivered delete and a replayed update do not open', async function () {
    const deviceId = 'reenroll-1';
    const { files, update, del, oldKids } = await interruptedDelete(deviceId);
    await writeFile(files.tokenFile, 'tok-again\n', { mode: 0o600 });
    s.server.expectEnrollment(deviceId, 'tok-again', 'carol');
    const agent = await start(files);
    await waitFor('the re-enrollment to be answered', async () => (await readDeviceState(files)).provisioned, 10_000);

    const newKids = (await KeyStore.open(files.keystore)).publicKeys().keys.map((k) => k.kid);
    expect(
      newKids.filter((k) => oldKids.includes(k)),
      'old kids still in use',
    ).to.deep.equal([]);

    const seen = s.server.acks.length;
    await s.server.publish(deviceId, del.token);
    await s.server.publish(deviceId, update.token);
    // Processed in order after them: once this is acked, the two replays have been dealt with.
    expect((await s.server.command(deviceId, 'selftest')).claims.status).to.equal('applied');
    expect(
      s.server.acks.slice(seen).filter((a) => a.claims.ref === del.jti || a.claims.ref === update.jti),
      'acks to the old commands',
    ).to.deep.equal([]);
    const st = await readDeviceState(files);
    expect([st.provisioned, st.decommissioned, st.user_id]).to.deep.equal([true, false, 'carol']);
    for (const f of ['signing.jwk', 'encryption.jwk']) expect(await exists(join(files.keystore, f)), f).to.equal(true);
    expect(agent.connected).to.equal(true);
  });

  it('keys from systemd credentials (not removable) and a new token: refuses to start (E_KEYSTORE_READONLY, exit 2), state unchanged', async function () {
    const deviceId = 'reenroll-2';
    const { files } = await interruptedDelete(deviceId);
    // The same keys supplied as credentials, as LoadCredential= would; the wipe cannot remove those.
    const creds = join(files.dir, 'creds');
    await mkdir(creds, { mode: 0o700 });
    for (const f of ['signing.jwk', 'encryption.jwk']) await cp(join(files.keystore, f), join(creds, f));
    await rm(join(files.keystore, 'signing.jwk'));
    await rm(join(files.keystore, 'encryption.jwk'));
    await writeFile(files.tokenFile, 'tok-creds\n', { mode: 0o600 });
    s.server.expectEnrollment(deviceId, 'tok-creds', 'carol');
    const before = await readFile(join(files.stateDir, 'state.json'), 'utf8');

    const saved = process.env.CREDENTIALS_DIRECTORY;
    process.env.CREDENTIALS_DIRECTORY = creds;
    let refused: StartRefusal | undefined;
    try {
      refused = await startRefusal(s, { configPath: files.configPath, log: logs.logger });
    } finally {
      if (saved === undefined) delete process.env.CREDENTIALS_DIRECTORY;
      else process.env.CREDENTIALS_DIRECTORY = saved;
    }
    expect(refused?.code, 'the agent re-enrolled on keys it cannot replace').to.equal('E_KEYSTORE_READONLY');
    expect(agentExitStatus(refused)).to.equal(2);
    expect(refused?.message).to.match(/credential/);
    expect(await readFile(join(files.stateDir, 'state.json'), 'utf8'), 'state changed').to.equal(before);
    expect(
      s.server.enrollments.filter((d) => d === deviceId),
      'enrollments sent',
    ).to.deep.equal([]);
  });
});
