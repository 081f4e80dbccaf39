/**
 * Issue 25 through `serve` over a real broker (aedes): boards' acks arrive as
 * MQTT messages and are stored with the inner JWS the board signed; serve's
 * checkpointer (ServeOptions.auditCheckpointMs) signs the head once it moved;
 * the log, verified afterwards, checks every board signature, also that of a
 * board that rotated its keys since.
 */
import { expect } from 'chai';
import { toPublicJwk } from '../../protocol/index.js';
import { verifyRegistry } from '../../server/audit/registry-audit.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { eventually, makeSimDevice } from './sim-fleet.js';

describe('serve: board-signed acks kept in the audit, checkpoints signed at an interval (issue 25)', function () {
  this.timeout(30_000);
  let f: Fixture;

  before(async () => {
    f = await startFixture({ auditCheckpointMs: 150 });
  });
  after(async () => {
    await f?.close();
  });

  it('acks over MQTT are stored verbatim (ack_jws), a checkpoint follows the head, and the log verifies after a key rotation', async () => {
    const storage = f.server.data.storage;
    const dev = f.fleet.add(await makeSimDevice('audit-serve-1'));
    await storage.devices.add({
      id: dev.id,
      userId: 'alice',
      origin: 'jwks',
      signing: toPublicJwk(dev.signing),
      encryption: toPublicJwk(dev.encryption),
      state: 'provisioned',
    });
    const first = await f.server.send({ deviceId: dev.id, action: 'selftest' });
    expect((await f.server.waitForAck(first.jti, 10_000))?.ackStatus).to.equal('applied');
    const oldKid = dev.signing.kid;
    const rot = await f.server.send({ deviceId: dev.id, action: 'rotate' });
    expect((await f.server.waitForAck(rot.jti, 10_000))?.ackStatus).to.equal('applied');
    expect(dev.signing.kid).to.not.equal(oldKid);
    const last = await f.server.send({ deviceId: dev.id, action: 'selftest' });
    expect((await f.server.waitForAck(last.jti, 10_000))?.ackStatus).to.equal('applied');

    const acks = (await storage.audit.query({ event: 'command.ack', deviceId: dev.id, limit: 10 })).map((a) => a.detail);
    expect(acks).to.have.length(3);
    for (const a of acks)
      expect(a.ack_jws, JSON.stringify(a))
        .to.be.a('string')
        .and.match(/^[\w-]+\.[\w-]+\.[\w-]+$/);
    // The first ack was signed with the key the board has since replaced.
    const header = JSON.parse(Buffer.from(String(acks[0]?.ack_jws).split('.')[0] as string, 'base64url').toString('utf8')) as { kid: string };
    expect(header.kid).to.equal(oldKid);

    const head = await storage.audit.head();
    const cp = await eventually(async () => (await storage.audit.checkpoints()).find((c) => c.lastId >= head.lastId), 5000, 'a checkpoint of the head');
    expect(cp.hash).to.match(/^[0-9a-f]{64}$/);
    // Only when the head moved: after more ticks, no two checkpoints sign the same head.
    await new Promise((resolve) => setTimeout(resolve, 500));
    const all = await storage.audit.checkpoints();
    expect(new Set(all.map((c) => c.lastId)).size).to.equal(all.length);

    const report = await verifyRegistry(storage, f.server.data.keys);
    expect(report.broken, JSON.stringify(report.broken)).to.equal(undefined);
    expect(report.acks.verified).to.equal(3);
    expect(report.checkpoints.verified).to.be.at.least(1);
  });
});
