/**
 * A rotation interrupted between its key writes (power cut after the new
 * encryption key, before the new signing key) whose redelivered command is
 * then refused (E_EXPIRED after a long outage) is never redone: the agent
 * makes the original encryption key current again and clears the rotation
 * marker, so the next rotate starts from the keys the server knows, not from
 * the orphaned key (over aedes, the command held back by the broker).
 */
import { expect } from 'chai';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type RunningAgent } from '../../agent/agent.js';
import { KeyStore } from '../../agent/store/keystore.js';
import { bufferedLogger } from '../../lib/log.js';
import type { AgentState } from '../../agent/store/state.js';
import { generateEncryptionKey, generateSigningKey } from '../../protocol/index.js';
import { makeDevice, readDeviceState, useAedesSuite } from './agent-fixture.js';

const logs = bufferedLogger('debug');

describe('agent: an interrupted rotation whose command is then refused is undone (aedes)', function () {
  this.timeout(30_000);
  const s = useAedesSuite(logs);

  async function start(configPath: string): Promise<RunningAgent> {
    const agent = await startAgent({ configPath, log: logs.logger, backoff: { minMs: 50, maxMs: 400 } });
    s.running.add(agent);
    if (!agent.connected) await new Promise<void>((r) => agent.once('ready', () => r()));
    return agent;
  }

  it('refused E_EXPIRED: the original encryption key is current again, the marker cleared; the next rotate keeps the original as previous', async function () {
    const deviceId = 'rotref-1';
    const files = await makeDevice({ deviceId, brokerUrl: s.broker.url, server: s.party, keys: true });
    s.dirs.push(files.dir);
    await s.server.registerFromKeystore(deviceId, files.keystore);
    const agent = await start(files.configPath);
    expect((await s.server.command(deviceId, 'request', {}, { userId: 'alice' })).claims.status).to.equal('applied');
    await agent.stop();
    s.running.delete(agent);

    // A rotate whose processing was cut between the key writes: marker saved, encryption.previous := original,
    // encryption := new, signing still the old one. Its exp passes while the board is off.
    const rotate = await s.server.seal(deviceId, 'rotate', {}, { now: Date.now() - 3600_000, ttlSeconds: 60 });
    const ks = await KeyStore.open(files.keystore);
    const original = ks.encryptionKey!;
    const oldSigning = ks.signingKey!;
    const orphanEnc = await generateEncryptionKey({ type: 'ec' });
    const orphanSig = await generateSigningKey();
    const path = join(files.stateDir, 'state.json');
    const st = JSON.parse(await readFile(path, 'utf8')) as AgentState;
    st.pending_rotation = {
      jti: rotate.jti,
      seq: rotate.seq,
      old_signing_kid: oldSigning.kid,
      old_encryption_kid: original.kid,
      new_signing_kid: orphanSig.kid,
      new_encryption_kid: orphanEnc.kid,
      ack: 'sealed-ack-not-sent',
    };
    await writeFile(path, JSON.stringify(st), { mode: 0o600 });
    await ks.write('encryption.previous', original);
    await ks.write('encryption', orphanEnc);

    await start(files.configPath);
    const refused = s.server.waitAck((a) => a.claims.ref === rotate.jti);
    await s.server.publish(deviceId, rotate.token);
    expect([(await refused).claims.status, (await refused).claims.code]).to.deep.equal(['rejected', 'E_EXPIRED']);

    const after = await readDeviceState(files);
    expect(after.pending_rotation, 'rotation marker').to.equal(null);
    const keys = await KeyStore.open(files.keystore);
    expect(keys.encryptionKey?.kid, 'current encryption key').to.equal(original.kid);
    expect(keys.signingKey?.kid).to.equal(oldSigning.kid);
    expect(
      keys.decryptionKeys().map((k) => k.kid),
      'the orphaned key is gone',
    ).to.not.include(orphanEnc.kid);

    // Manageable as the server knows it, and the next rotation starts from the original keys.
    expect((await s.server.command(deviceId, 'update', { user_id: 'bob' })).claims.status).to.equal('applied');
    const ack = await s.server.command(deviceId, 'rotate');
    expect(ack.claims.status, ack.claims.detail).to.equal('applied');
    expect(ack.signerKid).to.equal(oldSigning.kid);
    expect((await readDeviceState(files)).keys.previous_encryption, 'previous encryption key after the next rotate').to.equal(original.kid);
  });
});
