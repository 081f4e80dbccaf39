import { expect } from 'chai';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { rejection } from '../helpers/rejection.js';
import { eventually, makeSimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';

describe('server: enrollment and the command lifecycle (simulated device, aedes)', function () {
  let f: Fixture;
  beforeEach(async () => {
    f = await startFixture();
  });
  afterEach(async () => {
    await f.close();
  });

  it('enrolls with a token, confirms with request, then update, rotate and delete are each acked and recorded', async () => {
    const storage = f.server.data.storage;
    const { token } = await storage.enrollment.createToken('sensor-1', 'alice', 60_000);
    const dev = f.fleet.add(await makeSimDevice('sensor-1'));
    await f.fleet.enroll(dev, token);

    const provisioned = await eventually(
      async () => (await storage.devices.get('sensor-1'))?.state === 'provisioned' && (await storage.devices.get('sensor-1')),
      10_000,
      'provisioned',
    );
    expect(provisioned.userId).to.equal('alice');
    expect(provisioned.signing?.kid).to.equal(dev.signing.kid);
    expect(dev.provisioned).to.equal(true);
    expect(dev.userId).to.equal('alice');

    const update = await f.server.send({ deviceId: 'sensor-1', action: 'update', params: { sensor: { enabled: true, sample_interval_s: 30 } } });
    const updated = await f.server.waitForAck(update.jti, 10_000);
    expect(updated?.ackStatus).to.equal('applied');
    expect(updated?.seq).to.equal(2);

    const oldEnc = dev.encryption.kid;
    const rotate = await f.server.send({ deviceId: 'sensor-1', action: 'rotate' });
    expect((await f.server.waitForAck(rotate.jti, 10_000))?.ackStatus).to.equal('applied');
    const rotated = await storage.devices.require('sensor-1');
    expect(rotated.encryption?.kid).to.equal(dev.encryption.kid).and.not.equal(oldEnc);
    expect(rotated.signing?.kid).to.equal(dev.signing.kid);

    const del = await f.server.send({ deviceId: 'sensor-1', action: 'delete' });
    expect(del.encryptionKid).to.equal(dev.encryption.kid);
    expect((await f.server.waitForAck(del.jti, 10_000))?.ackStatus).to.equal('applied');
    const gone = await storage.devices.require('sensor-1');
    expect(gone.state).to.equal('decommissioned');
    expect(gone.encryption).to.equal(undefined);
    expect(await rejection(storage.seq.allocate('sensor-1'))).with.property('code', 'E_DECOMMISSIONED');
    expect(dev.applied.map((c) => c.action)).to.deep.equal(['request', 'update', 'rotate', 'delete']);
    expect(dev.applied.map((c) => c.seq)).to.deep.equal([1, 2, 3, 4]);
    const events = (await storage.audit.log({ deviceId: 'sensor-1' })).map((a) => a.event);
    expect(events).to.include.members(['token.create', 'device.enroll', 'device.provisioned', 'device.rotate', 'device.decommissioned']);
  });

  async function refusedEnrollment(code: string, act: () => Promise<void>): Promise<void> {
    const before = f.inbound.length;
    await act();
    const result = await eventually(() => f.inbound.slice(before).find((r) => r.kind !== 'ignored'), 10_000, 'enrollment handled');
    expect(result).to.include({ kind: 'dropped', code });
  }

  it('refuses a reused token, an expired token, a token bound to another device and a bad self-signature, registering nothing', async () => {
    const storage = f.server.data.storage;
    const first = f.fleet.add(await makeSimDevice('dev-a'));
    const { token } = await storage.enrollment.createToken('dev-a', 'alice', 60_000);
    await f.fleet.enroll(first, token);
    await eventually(async () => (await storage.devices.get('dev-a'))?.state === 'provisioned', 10_000, 'dev-a provisioned');

    // Reuse by another board (other keys) claiming the same id: refused, keys unchanged.
    const impostor = f.fleet.add(await makeSimDevice('dev-a'));
    await refusedEnrollment('E_TOKEN_USED', () => f.fleet.enroll(impostor, token));
    expect((await storage.devices.require('dev-a')).signing?.kid).to.equal(first.signing.kid);

    // Expired.
    const clockSkewed = openSqliteStorage(storage.info.location, { now: () => Date.now() - 120_000 });
    const expired = (await clockSkewed.enrollment.createToken('dev-b', 'alice', 60_000)).token;
    await clockSkewed.close();
    await refusedEnrollment('E_TOKEN_EXPIRED', async () => f.fleet.enroll(f.fleet.add(await makeSimDevice('dev-b')), expired));
    expect(await storage.devices.get('dev-b')).to.equal(undefined);

    // Bound to another device.
    const forC = (await storage.enrollment.createToken('dev-c', 'alice', 60_000)).token;
    await refusedEnrollment('E_TOKEN_DEVICE', async () => f.fleet.enroll(f.fleet.add(await makeSimDevice('dev-d')), forC));
    expect(await storage.devices.get('dev-d')).to.equal(undefined);
    expect(await storage.devices.get('dev-c')).to.equal(undefined);

    // Signed by a key other than the one it enrolls: the self-signature does not verify.
    const other = await makeSimDevice('dev-c');
    const devC = f.fleet.add(await makeSimDevice('dev-c'));
    const serverEnc = f.server.data.keys.trust.keys.find((k) => k.use === 'enc');
    // Re-seal: claims say devC's keys, signature by other's key.
    if (!serverEnc) throw new Error('no server encryption key');
    const forged = await forgeEnrollment(devC, other, forC, serverEnc);
    await refusedEnrollment('E_SIGNATURE', () => f.fleet.publishRaw('provision/dev-c/enroll', forged));
    expect(await storage.devices.get('dev-c')).to.equal(undefined);

    // The token bound to dev-c was not consumed by any of this: dev-c enrolls with it.
    await f.fleet.enroll(devC, forC);
    await eventually(async () => (await storage.devices.get('dev-c'))?.state === 'provisioned', 10_000, 'dev-c provisioned');
  });

  it('answers a repeated enrollment (same keys, request missed) with the pending request unchanged, and drops forged acks', async () => {
    const storage = f.server.data.storage;
    const { token } = await storage.enrollment.createToken('rep-1', 'bob', 60_000);
    const dev = f.fleet.add(await makeSimDevice('rep-1', 'silent'));
    await f.fleet.enroll(dev, token);
    await eventually(() => f.inbound.find((r) => r.kind === 'enrolled' && !r.repeated), 10_000, 'first enrollment');
    dev.behaviour = 'apply';
    await f.fleet.enroll(dev, token);
    const repeated = await eventually(() => f.inbound.find((r) => r.kind === 'enrolled' && r.repeated), 10_000, 'repeated enrollment');
    expect(repeated).to.include({ deviceId: 'rep-1' });
    // The same sealed request, not a new one.
    const requests = (await storage.commands.list({ deviceId: 'rep-1' })).filter((c) => c.action === 'request');
    expect(requests).to.have.length(1);
    await eventually(async () => (await storage.devices.get('rep-1'))?.state === 'provisioned', 10_000, 'provisioned');

    // An ack for rep-1's command signed by another device's key is dropped; the command stays unanswered.
    const cmd = await f.server.send({ deviceId: 'rep-1', action: 'selftest' });
    dev.behaviour = 'silent';
    const { sealAck } = await import('../../protocol/index.js');
    const mallory = await makeSimDevice('rep-1');
    const serverEnc = f.server.data.keys.trust.keys.find((k) => k.use === 'enc');
    if (!serverEnc) throw new Error('no server encryption key');
    const before = f.inbound.length;
    const forged = await sealAck(
      { deviceId: 'rep-1', serverId: 'provision-server', ref: cmd.jti, seq: cmd.seq, status: 'applied', code: 'OK' },
      { signer: mallory.signing, recipient: serverEnc },
    );
    await f.fleet.publishRaw('provision/rep-1/ack', forged.token);
    await f.fleet.publishRaw('provision/rep-1/ack', '{"status":"applied","ref":"' + cmd.jti + '"}');
    const results = await eventually(
      () => f.inbound.slice(before).filter((r) => r.kind === 'dropped').length >= 2 && f.inbound.slice(before),
      10_000,
      'forged acks handled',
    );
    expect(results.map((r) => (r.kind === 'dropped' ? r.code : r.kind))).to.include.members(['E_SIGNATURE', 'E_MALFORMED']);
    expect((await storage.commands.get(cmd.jti))?.ackStatus).to.equal(null);
  });

  it('never publishes to a device without a registered key', async () => {
    const storage = f.server.data.storage;
    await storage.enrollment.createToken('nokey', 'alice', 60_000);
    let err: unknown;
    try {
      await f.server.send({ deviceId: 'nokey', action: 'update', userId: 'alice', params: { sensor: { enabled: true } } });
    } catch (e) {
      err = e;
    }
    expect(err).to.have.property('code', 'E_NO_DEVICE');
    expect(await storage.commands.list({ deviceId: 'nokey' })).to.have.length(0);
  });
});

/** An enrollment whose claims carry `claimed`'s keys but whose JWS is signed by `signer`'s key. */
async function forgeEnrollment(
  claimed: { id: string; signing: import('../../protocol/index.js').PrivateJwk; encryption: import('../../protocol/index.js').PrivateJwk },
  signer: { signing: import('../../protocol/index.js').PrivateJwk },
  token: string,
  recipient: import('../../protocol/index.js').PublicJwk,
): Promise<string> {
  const p = await import('../../protocol/index.js');
  const iat = Math.floor(Date.now() / 1000);
  const claims = {
    iss: claimed.id,
    aud: 'provision-server',
    iat,
    exp: iat + 600,
    jti: (await import('node:crypto')).randomUUID(),
    token,
    keys: p.toJwkSet([claimed.signing, claimed.encryption]),
  };
  // sealClaims signs with `signer` and puts its kid in the header; the claimed signing key differs.
  return p.sealClaims(claims, { signer: { ...signer.signing }, recipient });
}
