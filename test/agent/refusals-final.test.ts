/**
 * A command the device refused is final (issue 10, finding 1), over aedes with
 * the attacker a client that captured the sealed bytes and publishes them
 * again (what a hostile broker can do): the refusal is saved before the
 * PUBACK, and a repetition gets the original outcome back as a duplicate and
 * is never applied, even after a restart with an unsynchronised clock (which
 * no longer checks `exp`), and after the device became provisioned.
 */
import { expect } from 'chai';
import { readFile, writeFile } from 'node:fs/promises';
import type { AgentFaults, RunningAgent } from '../../agent/agent.js';
import { KeyStore } from '../../agent/store/keystore.js';
import { bufferedLogger } from '../../lib/log.js';
import { boundRecent, initialState, MAX_RECENT, type RecentCommand } from '../../agent/store/state.js';
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

const logs = bufferedLogger('debug');

interface Recent {
  jti: string;
  status: string;
  code: string;
}

describe('agent: a refused command stays refused (aedes, replayed by another client)', function () {
  this.timeout(30_000);
  const s = useAedesSuite(logs);
  let n = 0;

  async function device(): Promise<{ files: DeviceFiles; deviceId: string }> {
    n += 1;
    const deviceId = `final-${n}`;
    const files = await addSuiteDevice(s, deviceId);
    return { files, deviceId };
  }

  async function start(files: DeviceFiles, faults?: AgentFaults): Promise<RunningAgent> {
    return startSuiteAgent(s, {
      configPath: files.configPath,
      log: logs.logger,
      backoff: { minMs: faults ? 60_000 : 50, maxMs: faults ? 60_000 : 400 },
      ...(faults ? { faults } : {}),
    });
  }

  const stop = (agent: RunningAgent): Promise<void> => stopSuiteAgent(s, agent);

  async function setClockPolicy(files: DeviceFiles, policy: 'trusted' | 'untrusted'): Promise<void> {
    const config = JSON.parse(await readFile(files.configPath, 'utf8')) as Record<string, unknown>;
    await writeFile(files.configPath, JSON.stringify({ ...config, clock: { policy } }, null, 2));
  }

  /** Publishes `token` again (the attacker) and waits for a new ack to `jti`. */
  async function replay(deviceId: string, token: string, jti: string): Promise<ReceivedAck> {
    const from = s.server.acks.length;
    await s.server.publish(deviceId, token);
    return s.server.waitAck((a) => a.claims.ref === jti && s.server.acks.indexOf(a) >= from);
  }

  it('update refused E_EXPIRED is not applied when replayed after a restart with an unsynchronised clock', async function () {
    const { files, deviceId } = await device();
    const agent = await start(files);
    expect((await s.server.command(deviceId, 'request', {}, { userId: 'alice' })).claims.status).to.equal('applied');

    // Held by the broker past its exp, then delivered: refused.
    const held = await s.server.seal(deviceId, 'update', { user_id: 'mallory', sensor: { enabled: false } }, { now: Date.now() - 3600_000, ttlSeconds: 60 });
    const first = await replay(deviceId, held.token, held.jti);
    expect([first.claims.status, first.claims.code]).to.deep.equal(['rejected', 'E_EXPIRED']);
    const recorded: Recent[] = (await readDeviceState(files)).recent;
    expect(recorded.find((r) => r.jti === held.jti)).to.include({ status: 'rejected', code: 'E_EXPIRED' });

    // Restart before NTP: exp is not checked, but the decision stands.
    await stop(agent);
    await setClockPolicy(files, 'untrusted');
    await start(files);
    const again = await replay(deviceId, held.token, held.jti);
    expect([again.claims.status, again.claims.code]).to.deep.equal(['rejected', 'E_EXPIRED']);
    expect(again.claims.detail).to.match(/^duplicate/);
    const st = await readDeviceState(files);
    expect(st.user_id).to.equal('alice');
    expect((st.settings as { sensor?: unknown }).sensor).to.equal(undefined);
    // The seq floor did not move: a command the server sent after it still applies.
    expect((await s.server.command(deviceId, 'update', { sensor: { sample_interval_s: 30 } })).claims.status).to.equal('applied');
  });

  it('rotate refused E_EXPIRED does not rotate when replayed after a restart with an unsynchronised clock', async function () {
    const { files, deviceId } = await device();
    const agent = await start(files);
    expect((await s.server.command(deviceId, 'request', {}, { userId: 'alice' })).claims.status).to.equal('applied');
    const kids = (await KeyStore.open(files.keystore)).publicKeys().keys.map((k) => k.kid);

    const held = await s.server.seal(deviceId, 'rotate', {}, { now: Date.now() - 3600_000, ttlSeconds: 60 });
    const first = await replay(deviceId, held.token, held.jti);
    expect([first.claims.status, first.claims.code]).to.deep.equal(['rejected', 'E_EXPIRED']);

    await stop(agent);
    await setClockPolicy(files, 'untrusted');
    await start(files);
    const again = await replay(deviceId, held.token, held.jti);
    expect([again.claims.status, again.claims.code]).to.deep.equal(['rejected', 'E_EXPIRED']);
    expect((await KeyStore.open(files.keystore)).publicKeys().keys.map((k) => k.kid)).to.deep.equal(kids);
    // Still managed with the keys the server knows.
    expect((await s.server.command(deviceId, 'selftest')).claims.status).to.equal('applied');
  });

  it('update refused E_NOT_PROVISIONED before the request is not applied when redelivered after it', async function () {
    const { files, deviceId } = await device();
    await start(files);
    const request = await s.server.seal(deviceId, 'request', {}, { userId: 'alice' });
    const update = await s.server.seal(deviceId, 'update', { user_id: 'mallory' });
    // The broker delivers the update first.
    const first = await replay(deviceId, update.token, update.jti);
    expect([first.claims.status, first.claims.code]).to.deep.equal(['rejected', 'E_NOT_PROVISIONED']);
    expect((await replay(deviceId, request.token, request.jti)).claims.status).to.equal('applied');
    const again = await replay(deviceId, update.token, update.jti);
    expect([again.claims.status, again.claims.code]).to.deep.equal(['rejected', 'E_NOT_PROVISIONED']);
    const st = await readDeviceState(files);
    expect(st.user_id).to.equal('alice');
    expect(st.last_seq).to.equal(request.seq);
  });

  it('a refusal saved just before a crash (no PUBACK) is answered the same way after the restart', async function () {
    const { files, deviceId } = await device();
    let crashed = false;
    const agent = await start(files, {
      afterPersist: (action) => {
        if (action !== 'update' || crashed) return;
        crashed = true;
        throw new Error('simulated crash between persist and PUBACK');
      },
    });
    const update = await s.server.seal(deviceId, 'update', { user_id: 'mallory' });
    await s.server.publish(deviceId, update.token);
    await waitFor('the simulated crash', () => crashed && !agent.connected);
    await stop(agent);
    expect(s.server.acks.some((a) => a.claims.ref === update.jti)).to.equal(false);

    // The broker redelivers the unacknowledged command to the restarted agent; meanwhile the device was provisioned.
    await start(files);
    const ack = await s.server.waitAck((a) => a.claims.ref === update.jti);
    expect([ack.claims.status, ack.claims.code]).to.deep.equal(['rejected', 'E_NOT_PROVISIONED']);
    expect((await s.server.command(deviceId, 'request', {}, { userId: 'alice' })).claims.status).to.equal('applied');
    const again = await replay(deviceId, update.token, update.jti);
    expect([again.claims.status, again.claims.code]).to.deep.equal(['rejected', 'E_NOT_PROVISIONED']);
    expect((await readDeviceState(files)).user_id).to.equal('alice');
  });

  it('the window is bounded: an entry that falls out raises the seq floor to its seq', function () {
    const st = initialState('dev');
    const rec = (seq: number): RecentCommand => ({ jti: `j-${seq}`, seq, action: 'update', status: 'rejected', code: 'E_EXPIRED', detail: '', at: 0 });
    st.recent = [rec(500), ...Array.from({ length: MAX_RECENT }, (_, i) => rec(i + 1))];
    st.last_seq = 3;
    boundRecent(st);
    expect(st.recent).to.have.length(MAX_RECENT);
    expect(st.recent.some((r) => r.jti === 'j-500')).to.equal(false);
    expect(st.last_seq).to.equal(500);
  });
});
