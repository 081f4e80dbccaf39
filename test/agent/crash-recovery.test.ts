/**
 * Crash recovery through a real broker (aedes in process, which keeps the
 * persistent `clean: false` session and its unacknowledged QoS 1 message
 * while the broker object lives): the agent "dies" between saving a
 * command's state and its PUBACK (the afterPersist hook throws, so no PUBACK
 * is sent and the connection drops; the agent is then stopped) or before the
 * state write's rename (beforeRename). A new agent on the same files gets the
 * command redelivered by the broker and must apply it exactly once and ack it.
 */
import { expect } from 'chai';
import { chmod, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AgentFaults, RunningAgent } from '../../agent/agent.js';
import { KeyStore } from '../../agent/store/keystore.js';
import { bufferedLogger } from '../../lib/log.js';
import type { PublicJwk } from '../../protocol/index.js';
import {
  addSuiteDevice,
  readDeviceState,
  startSuiteAgent,
  stopSuiteAgent,
  useAedesSuite,
  waitFor,
  type DeviceFiles,
  type ReceivedAck,
} from './agent-fixture.js';
import { fakeGpio, startWithFakeGpio } from '../helpers/fake-gpio.js';

const logs = bufferedLogger('debug');

/** Lines appended by the hook of `action` (one per run, the command's seq). */
async function hookRuns(files: DeviceFiles, action: string): Promise<string[]> {
  try {
    return (await readFile(join(files.dir, `${action}-runs`), 'utf8')).split('\n').filter((l) => l !== '');
  } catch {
    return [];
  }
}

async function installCountingHook(files: DeviceFiles, action: string): Promise<void> {
  const hook = join(files.hooksDir, action);
  await writeFile(hook, `#!/bin/sh\necho "$SENSOR_AGENT_SEQ" >> "${files.dir}/${action}-runs"\n`);
  await chmod(hook, 0o755);
}

function once<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** An applied rotate ack, signed by the old key, carrying the new public keys; returns them. */
function expectRotateAck(ack: ReceivedAck, oldSigningKid: string, signingKid: string, encryptionKid: string): { signing: PublicJwk; encryption: PublicJwk } {
  expect(ack.signerKid).to.equal(oldSigningKid);
  expect(ack.claims.status).to.equal('applied');
  const keys = (ack.claims.result?.keys as { keys: PublicJwk[] }).keys;
  const signing = keys.find((k) => k.use === 'sig');
  const encryption = keys.find((k) => k.use === 'enc');
  expect(signing?.kid).to.equal(signingKid);
  expect(encryption?.kid).to.equal(encryptionKid);
  return { signing: signing!, encryption: encryption! };
}

describe('agent crash recovery (aedes, persistent session redelivery)', function () {
  let n = 0;

  const s = useAedesSuite(logs);

  /** Starts an agent that fails once right after `action` is persisted: no PUBACK, the connection drops. */
  async function startCrashingAfterPersist(files: DeviceFiles, action: string): Promise<{ agent: RunningAgent; crashed: Promise<string> }> {
    const crashed = once<string>();
    let armed = true;
    const agent = await start(files, {
      afterPersist: (a) => {
        if (a !== action || !armed) return;
        armed = false;
        crashed.resolve(a);
        throw new Error('simulated crash between persist and PUBACK');
      },
    });
    return { agent, crashed: crashed.promise };
  }

  async function start(files: DeviceFiles, faults?: AgentFaults): Promise<RunningAgent> {
    // A long first reconnect delay: after the simulated crash, the crashed agent must not reconnect
    // (and take the redelivery) before it is stopped.
    return startWithFakeGpio(
      { configPath: files.configPath, log: logs.logger, backoff: { minMs: faults ? 60_000 : 50, maxMs: faults ? 60_000 : 500 }, ...(faults ? { faults } : {}) },
      (o) => startSuiteAgent(s, o),
    );
  }

  const stop = (agent: RunningAgent): Promise<void> => stopSuiteAgent(s, agent);

  /** A device with host-made keys, provisioned by a `request`; returns it stopped. */
  async function provisionedDevice(): Promise<{ files: DeviceFiles; deviceId: string }> {
    n += 1;
    const deviceId = `crash-${n}`;
    const files = await addSuiteDevice(s, deviceId);
    const agent = await start(files);
    const ack = await s.server.command(deviceId, 'request', {}, { userId: 'alice' });
    expect(ack.claims.status, ack.claims.detail).to.equal('applied');
    await stop(agent);
    return { files, deviceId };
  }

  it('update: crash after the state is saved, before the PUBACK: applied once, acked after the restart', async function () {
    const { files, deviceId } = await provisionedDevice();
    await installCountingHook(files, 'update');
    const { agent, crashed } = await startCrashingAfterPersist(files, 'update');

    const cmd = await s.server.seal(deviceId, 'update', { user_id: 'bob', sensor: { enabled: false } });
    await s.server.publish(deviceId, cmd.token);
    await crashed;
    await waitFor('the connection to drop', () => !agent.connected);
    await stop(agent);

    // Applied and saved, but neither PUBACKed nor acked.
    const mid = await readDeviceState(files);
    expect(mid.last_seq).to.equal(cmd.seq);
    expect(mid.user_id).to.equal('bob');
    expect(s.server.acks.some((a) => a.claims.ref === cmd.jti)).to.equal(false);
    expect(await hookRuns(files, 'update')).to.deep.equal([String(cmd.seq)]);

    // Restart: the broker redelivers; the agent re-acks it as a duplicate without applying it again.
    const ackWait = s.server.waitAck((a) => a.claims.ref === cmd.jti);
    const again = await start(files);
    const ack = await ackWait;
    expect(ack.claims.status).to.equal('applied');
    expect(ack.claims.seq).to.equal(cmd.seq);
    expect(ack.claims.detail).to.match(/^duplicate/);
    expect(await hookRuns(files, 'update')).to.deep.equal([String(cmd.seq)]);
    const st = await readDeviceState(files);
    expect(st.last_seq).to.equal(cmd.seq);
    expect((st.recent as { jti: string }[]).filter((r) => r.jti === cmd.jti)).to.have.length(1);
    expect(st.settings).to.deep.equal({ sensor: { enabled: false } });
    expect(fakeGpio(again).value(27)).to.equal(false); // the settings are in effect after the restart

    // The restarted agent keeps working: the next command is applied normally.
    const next = await s.server.command(deviceId, 'update', { sensor: { enabled: true } });
    expect(next.claims.status, next.claims.detail).to.equal('applied');
    expect(next.claims.detail).to.not.match(/^duplicate/);
    expect(fakeGpio(again).value(27)).to.equal(true);
  });

  it('update: crash before the state file rename: nothing saved, applied once after the restart', async function () {
    const { files, deviceId } = await provisionedDevice();
    await installCountingHook(files, 'update');
    const before = await readDeviceState(files);
    const crashed = once<string>();
    let armed = false;
    const agent = await start(files, {
      beforeRename: (temp) => {
        if (!armed) return;
        armed = false;
        crashed.resolve(temp);
        throw new Error('simulated crash before rename');
      },
    });

    armed = true;
    const cmd = await s.server.seal(deviceId, 'update', { user_id: 'carol', reporting: { interval_s: 42 } });
    await s.server.publish(deviceId, cmd.token);
    const temp = await crashed.promise;
    await waitFor('the connection to drop', () => !agent.connected);
    await stop(agent);

    // The old state is intact, the complete temp file is left behind as after a real crash.
    const mid = await readDeviceState(files);
    expect(mid.last_seq).to.equal(before.last_seq);
    expect(mid.user_id).to.equal('alice');
    expect(mid.settings).to.deep.equal({});
    expect((await readdir(files.stateDir)).sort()).to.deep.equal([temp.split('/').pop(), 'state.json'].sort());
    expect(s.server.acks.some((a) => a.claims.ref === cmd.jti)).to.equal(false);

    const ackWait = s.server.waitAck((a) => a.claims.ref === cmd.jti);
    await start(files);
    const ack = await ackWait;
    expect(ack.claims.status, ack.claims.detail).to.equal('applied');
    expect(ack.claims.detail).to.not.match(/^duplicate/); // the redelivery is the first application that counts
    const st = await readDeviceState(files);
    expect(st.last_seq).to.equal(cmd.seq);
    expect(st.user_id).to.equal('carol');
    expect(st.settings).to.deep.equal({ reporting: { interval_s: 42 } });
    expect((st.recent as { jti: string }[]).filter((r) => r.jti === cmd.jti)).to.have.length(1);
    expect(await readdir(files.stateDir)).to.deep.equal(['state.json']); // the stale temp was removed at start
    // The hook ran before the crash and again for the redelivery (hooks.ts: hooks must be idempotent).
    expect(await hookRuns(files, 'update')).to.deep.equal([String(cmd.seq), String(cmd.seq)]);
  });

  it('rotate: crash after the state is saved, before the PUBACK: rotated once; the stored ack (old key, new keys) is sent after the restart', async function () {
    const { files, deviceId } = await provisionedDevice();
    await installCountingHook(files, 'rotate');
    const oldSigning = s.server.devices.get(deviceId)!.signing[0]!.kid;
    const oldEnc = s.server.devices.get(deviceId)!.encryption.kid;
    const { agent, crashed } = await startCrashingAfterPersist(files, 'rotate');
    const cmd = await s.server.seal(deviceId, 'rotate');
    await s.server.publish(deviceId, cmd.token);
    await crashed;
    await waitFor('the connection to drop', () => !agent.connected);
    await stop(agent);

    const mid = await readDeviceState(files);
    const ks = await KeyStore.open(files.keystore);
    const rotated = { signing: ks.signingKey!.kid, encryption: ks.encryptionKey!.kid, previous_encryption: ks.previousEncryptionKey!.kid };
    expect(rotated.signing).to.not.equal(oldSigning);
    expect(rotated.encryption).to.not.equal(oldEnc);
    expect(rotated.previous_encryption).to.equal(oldEnc);
    expect(mid.keys).to.deep.equal(rotated);
    expect(mid.last_seq).to.equal(cmd.seq);
    expect(s.server.acks.some((a) => a.claims.ref === cmd.jti)).to.equal(false);

    const ackWait = s.server.waitAck((a) => a.claims.ref === cmd.jti);
    await start(files);
    const ack = await ackWait;
    // Verified by the server with the old signing key (the only one it knows), carrying the keys of the one rotation.
    const keys = expectRotateAck(ack, oldSigning, rotated.signing, rotated.encryption);
    const raw = s.server.rawAcks.filter((t) => t === (mid.rotate_ack as { token: string }).token);
    expect(raw.length).to.be.greaterThan(0); // the very ack sealed at rotation time

    const ks2 = await KeyStore.open(files.keystore);
    expect({ signing: ks2.signingKey!.kid, encryption: ks2.encryptionKey!.kid, previous_encryption: ks2.previousEncryptionKey!.kid }).to.deep.equal(rotated);
    const st = await readDeviceState(files);
    expect(st.keys).to.deep.equal(rotated);
    expect(st.last_seq).to.equal(cmd.seq);
    expect(await hookRuns(files, 'rotate')).to.deep.equal([String(cmd.seq)]);

    // The server switches to the new keys: commands under them work.
    s.server.register(deviceId, keys);
    const probe = await s.server.command(deviceId, 'selftest');
    expect(probe.claims.status).to.equal('applied');
    expect(probe.signerKid).to.equal(rotated.signing);
  });

  it('rotate: crash after the new keys are written, before the state records it: completed at start, same ack, not rotated again', async function () {
    const { files, deviceId } = await provisionedDevice();
    const oldSigning = s.server.devices.get(deviceId)!.signing[0]!.kid;
    const oldEnc = s.server.devices.get(deviceId)!.encryption.kid;
    const crashed = once<string>();
    let writes = -1;
    const agent = await start(files, {
      // Write 1 of the rotate is its pending_rotation marker; write 2 (after the keys) records the command.
      beforeRename: () => {
        if (writes < 0) return;
        writes += 1;
        if (writes !== 2) return;
        crashed.resolve('');
        throw new Error('simulated crash before the rotation is recorded');
      },
    });
    writes = 0;
    const cmd = await s.server.seal(deviceId, 'rotate');
    await s.server.publish(deviceId, cmd.token);
    await crashed.promise;
    await waitFor('the connection to drop', () => !agent.connected);
    await stop(agent);

    const mid = await readDeviceState(files);
    const marker = mid.pending_rotation as { jti: string; new_signing_kid: string; new_encryption_kid: string; ack: string };
    expect(marker.jti).to.equal(cmd.jti);
    expect(mid.last_seq).to.be.lessThan(cmd.seq);
    const ks = await KeyStore.open(files.keystore);
    expect(ks.signingKey!.kid).to.equal(marker.new_signing_kid);
    expect(ks.encryptionKey!.kid).to.equal(marker.new_encryption_kid);

    const nRaw = s.server.rawAcks.length;
    const ackWait = s.server.waitAck((a) => a.claims.ref === cmd.jti);
    await start(files);
    const ack = await ackWait;
    expectRotateAck(ack, oldSigning, marker.new_signing_kid, marker.new_encryption_kid);
    // Sent at start (resumed) and again for the redelivered command: always the marker's sealed ack.
    await waitFor('the re-ack of the redelivered rotate', () => s.server.rawAcks.length - nRaw >= 2);
    expect(s.server.rawAcks.slice(nRaw)).to.deep.equal([marker.ack, marker.ack]);

    const st = await readDeviceState(files);
    expect(st.pending_rotation).to.equal(null);
    expect(st.last_seq).to.equal(cmd.seq);
    expect(st.keys).to.deep.equal({ signing: marker.new_signing_kid, encryption: marker.new_encryption_kid, previous_encryption: oldEnc });
    const ks2 = await KeyStore.open(files.keystore);
    expect(ks2.signingKey!.kid).to.equal(marker.new_signing_kid);
    expect(ks2.previousEncryptionKey!.kid).to.equal(oldEnc);
  });
});
