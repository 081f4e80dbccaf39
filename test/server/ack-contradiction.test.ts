/**
 * Issue 10, finding 1 (server side), over a real broker (aedes) where the
 * broker is the attacker: it captures a sealed command, the device refuses it
 * (here as an agent before the fix does: refused, not recorded), the broker
 * delivers the same bytes again later and the device applies them. The
 * device's authenticated `applied` ack then contradicts the `rejected` the
 * registry recorded: the server must not file it as a duplicate, must not
 * adopt its effects, must audit it as a security event and flag the device.
 */
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { toPublicJwk } from '../../protocol/index.js';
import { ACK_CONTRADICTION_EVENT } from '../../server/storage/rules.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { MIGRATIONS } from '../../server/registry/schema.js';
import { randomUUID } from 'node:crypto';
import { toJwkSet, type AckClaims } from '../../protocol/index.js';
import { runServerCli } from './run-cli.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { eventually, makeSimDevice, type SimDevice } from './sim-fleet.js';

describe('server: an ack contradicting a recorded outcome is a security event (broker replays a refused command)', function () {
  this.timeout(30_000);
  let f: Fixture;
  let spy: MqttClient;
  /** Every sealed command the "broker" saw, by topic. */
  const captured: { topic: string; payload: Buffer }[] = [];

  before(async () => {
    f = await startFixture();
    spy = await mqtt.connectAsync(f.broker.url, { clientId: 'broker-replay', clean: true, reconnectPeriod: 0 });
    spy.on('message', (topic, payload) => captured.push({ topic, payload: Buffer.from(payload) }));
    await spy.subscribeAsync('provision/+/command', { qos: 1 });
  });
  after(async () => {
    await spy?.endAsync(true);
    await f?.close();
  });

  async function provisioned(id: string): Promise<SimDevice> {
    const dev = f.fleet.add(await makeSimDevice(id));
    await f.server.data.storage.devices.add({
      id,
      userId: 'alice',
      origin: 'jwks',
      signing: toPublicJwk(dev.signing),
      encryption: toPublicJwk(dev.encryption),
      state: 'provisioned',
    });
    return dev;
  }

  /** Sends `action`, lets the device refuse it (unrecorded), then replays the captured bytes after the device "restarts" willing to apply. */
  async function refuseThenReplay(dev: SimDevice, send: () => Promise<{ jti: string }>): Promise<string> {
    dev.refuseUnrecorded = 'E_EXPIRED';
    const before = captured.length;
    const { jti } = await send();
    const refused = await f.server.waitForAck(jti, 10_000);
    expect(refused?.ackStatus).to.equal('rejected');
    expect(refused?.ackCode).to.equal('E_EXPIRED');
    const bytes = await eventually(() => captured.slice(before).find((m) => m.topic === `provision/${dev.id}/command`), 5000, 'captured command');
    dev.refuseUnrecorded = undefined;
    const inboundBefore = f.inbound.length;
    await spy.publishAsync(bytes.topic, bytes.payload, { qos: 1 });
    await eventually(
      () => f.inbound.slice(inboundBefore).find((r) => r.kind === 'contradiction' || (r.kind === 'ack' && r.command.jti === jti)),
      10_000,
      'the replayed command acked',
    );
    return jti;
  }

  it('update refused, then applied on replay: stays rejected, user not rebound, audited, device flagged (device show, device list)', async () => {
    const storage = f.server.data.storage;
    const dev = await provisioned('victim-u');
    const jti = await refuseThenReplay(dev, () => f.server.send({ deviceId: dev.id, action: 'update', params: { user_id: 'mallory' } }));
    // The device did apply it (bound to mallory): that is what its ack says.
    expect(dev.applied.map((c) => c.jti)).to.include(jti);
    expect(dev.applied.find((c) => c.jti === jti)?.params).to.deep.include({ user_id: 'mallory' });

    const command = await storage.commands.get(jti);
    expect(command?.ackStatus, 'the first outcome stays').to.equal('rejected');
    const device = await storage.devices.require(dev.id);
    expect(device.userId, 'the ack of a refused command rebinds nobody').to.equal('alice');
    expect(device.flag?.event).to.equal(ACK_CONTRADICTION_EVENT);
    const events = (await storage.audit.log({ deviceId: dev.id })).filter((a) => a.event === ACK_CONTRADICTION_EVENT);
    expect(events).to.have.length(1);
    expect(events[0]?.detail).to.deep.include({ jti, action: 'update', effects: 'not applied' });
    expect(events[0]?.detail.recorded).to.include({ status: 'rejected', code: 'E_EXPIRED' });
    expect(events[0]?.detail.claimed).to.include({ status: 'applied', code: 'OK' });

    // Queryable by the operator, with another process reading the same registry.
    const show = await runServerCli(['device', 'show', dev.id, '--data', f.dataDir]);
    expect(show.code, show.stderr).to.equal(0);
    const shown = JSON.parse(show.stdout) as { security_flag: Record<string, unknown> | null; audit: { event: string }[] };
    expect(shown.security_flag).to.include({ event: ACK_CONTRADICTION_EVENT, jti, action: 'update' });
    expect(shown.audit.map((a) => a.event)).to.include(ACK_CONTRADICTION_EVENT);
    const list = await runServerCli(['device', 'list', '--data', f.dataDir]);
    expect(list.code, list.stderr).to.equal(0);
    expect(list.stdout.split('\n').find((l) => l.startsWith('victim-u '))).to.contain(ACK_CONTRADICTION_EVENT);
    expect(list.stderr).to.match(/flagged by a security event/);
  });

  it('rotate refused, then applied on replay: the new keys are reported in the audit, never adopted', async () => {
    const storage = f.server.data.storage;
    const dev = await provisioned('victim-r');
    const oldSigning = dev.signing.kid;
    const oldEncryption = dev.encryption.kid;
    const jti = await refuseThenReplay(dev, () => f.server.send({ deviceId: dev.id, action: 'rotate' }));
    expect(dev.signing.kid, 'the device rotated').to.not.equal(oldSigning);

    expect((await storage.commands.get(jti))?.ackStatus).to.equal('rejected');
    const device = await storage.devices.require(dev.id);
    expect(device.signing?.kid).to.equal(oldSigning);
    expect(device.encryption?.kid).to.equal(oldEncryption);
    expect(device.keys.map((k) => k.kid)).to.not.include(dev.signing.kid);
    const event = (await storage.audit.log({ deviceId: dev.id })).find((a) => a.event === ACK_CONTRADICTION_EVENT);
    expect(event?.detail.claimed_keys).to.deep.equal({ signing_kid: dev.signing.kid, encryption_kid: dev.encryption.kid });
    expect(device.flag?.detail).to.include({ jti, action: 'rotate' });
    // A new enrollment (fresh token, new keys) clears the flag: the registry knows the device again.
    const fresh = await makeSimDevice(dev.id);
    await storage.devices.add(
      { id: dev.id, userId: 'alice', origin: 'jwks', signing: toPublicJwk(fresh.signing), encryption: toPublicJwk(fresh.encryption), state: 'provisioned' },
      { replace: true },
    );
    expect((await storage.devices.require(dev.id)).flag).to.equal(null);
  });

  it('a repeated ack that agrees with the recorded outcome (the broker redelivers an applied command) is a plain duplicate', async () => {
    const storage = f.server.data.storage;
    const dev = await provisioned('honest-1');
    const before = captured.length;
    const { jti } = await f.server.send({ deviceId: dev.id, action: 'update', params: { sensor: { enabled: true } } });
    expect((await f.server.waitForAck(jti, 10_000))?.ackStatus).to.equal('applied');
    const bytes = await eventually(() => captured.slice(before).find((m) => m.topic === `provision/${dev.id}/command`), 5000, 'captured command');
    const inboundBefore = f.inbound.length;
    await spy.publishAsync(bytes.topic, bytes.payload, { qos: 1 });
    // The device refuses the replay (E_REPLAY) and says so: consistent with "applied".
    const dup = await eventually(() => f.inbound.slice(inboundBefore).find((r) => r.kind === 'ack' || r.kind === 'contradiction'), 10_000, 'replay answered');
    expect(dup).to.include({ kind: 'ack', duplicate: true });
    expect((await storage.devices.require(dev.id)).flag).to.equal(null);
    expect((await storage.audit.log({ deviceId: dev.id })).map((a) => a.event)).to.not.include(ACK_CONTRADICTION_EVENT);
  });

  it('a registry made before the flag existed (schema 1) is migrated: its devices carry no flag', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'registry-v1-'));
    try {
      const path = join(dir, 'registry.sqlite');
      const db = new Database(path);
      db.exec(MIGRATIONS[0] as string);
      db.pragma('user_version = 1');
      db.prepare("INSERT INTO devices (id, user_id, state, origin, created_at, updated_at) VALUES ('old-1', 'alice', 'provisioned', 'jwks', 1, 1)").run();
      db.close();
      const storage = openSqliteStorage(path);
      try {
        expect(await storage.devices.require('old-1')).to.include({ flag: null, userId: 'alice' });
      } finally {
        await storage.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('registry: which later acks contradict a recorded outcome (rotate with other keys; not a repeat without keys, not a refusal after applied)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'registry-contra-'));
    const storage = openSqliteStorage(join(dir, 'registry.sqlite'), { create: true });
    try {
      const dev = await makeSimDevice('rc-1');
      await storage.devices.add({
        id: 'rc-1',
        userId: 'alice',
        origin: 'jwks',
        signing: toPublicJwk(dev.signing),
        encryption: toPublicJwk(dev.encryption),
        state: 'provisioned',
      });
      const command = async (action: string): Promise<{ jti: string; seq: number }> => {
        const { seq } = await storage.seq.allocate('rc-1');
        const jti = randomUUID();
        await storage.commands.record({
          jti,
          deviceId: 'rc-1',
          action,
          userId: 'alice',
          paramsDigest: 'd',
          seq,
          encryptionKid: dev.encryption.kid,
          sealed: 'x',
          expiresAt: Date.now() + 60_000,
        });
        return { jti, seq };
      };
      const ack = (c: { jti: string; seq: number }, status: AckClaims['status'], code: string, result?: Record<string, unknown>): AckClaims => ({
        iss: 'rc-1',
        aud: 'provision-server',
        iat: 0,
        jti: randomUUID(),
        ref: c.jti,
        seq: c.seq,
        status,
        code,
        detail: '',
        ...(result ? { result } : {}),
      });
      const next = await makeSimDevice('rc-1');
      const other = await makeSimDevice('rc-1');
      const rot = await command('rotate');
      const keys = { keys: toJwkSet([next.signing, next.encryption]) };
      expect(
        (
          await storage.commands.recordAck('rc-1', ack(rot, 'applied', 'OK', keys), [
            { kind: 'keys-rotated', signing: toPublicJwk(next.signing), encryption: toPublicJwk(next.encryption) },
          ])
        ).kind,
      ).to.equal('recorded');
      expect((await storage.commands.recordAck('rc-1', ack(rot, 'applied', 'OK', keys), [])).kind).to.equal('duplicate');
      expect((await storage.commands.recordAck('rc-1', ack(rot, 'applied', 'OK'), [])).kind, 'the outcome repeated without keys').to.equal('duplicate');
      expect((await storage.commands.recordAck('rc-1', ack(rot, 'rejected', 'E_REPLAY'), [])).kind).to.equal('duplicate');
      expect((await storage.commands.recordAck('rc-1', ack(rot, 'rejected', 'E_EXPIRED'), [])).kind).to.equal('duplicate');
      expect((await storage.devices.require('rc-1')).flag).to.equal(null);
      expect((await storage.commands.recordAck('rc-1', ack(rot, 'applied', 'OK', { keys: toJwkSet([other.signing, other.encryption]) }), [])).kind).to.equal(
        'contradiction',
      );
      expect((await storage.devices.require('rc-1')).signing?.kid, 'keys stay those first recorded').to.equal(next.signing.kid);
      const failed = await command('update');
      expect((await storage.commands.recordAck('rc-1', ack(failed, 'failed', 'E_HOOK'), [])).kind).to.equal('recorded');
      expect((await storage.commands.recordAck('rc-1', ack(failed, 'applied', 'OK'), [])).kind).to.equal('contradiction');
      expect((await storage.audit.log({ deviceId: 'rc-1' })).filter((a) => a.event === ACK_CONTRADICTION_EVENT)).to.have.length(2);
    } finally {
      await storage.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
