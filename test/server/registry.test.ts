import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { toPublicJwk, type AckClaims } from '../../protocol/index.js';
import { PREVIOUS_KEY_GRACE_MS } from '../../server/storage/rules.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { rejection } from '../helpers/rejection.js';
import { makeSimDevice } from './sim-fleet.js';
import { ackEffectsOf } from '../../server/core/actions/table.js';
import type { CommandRecord } from '../../server/storage/records.js';

describe('server: registry', function () {
  let dir: string;
  let path: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'registry-'));
    path = join(dir, 'registry.sqlite');
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses a database whose schema is newer than this program, and one that does not exist', async () => {
    const r = openSqliteStorage(path, { create: true });
    r.db.pragma('user_version = 99');
    await r.close();
    expect(() => openSqliteStorage(path))
      .to.throw()
      .with.property('code', 'E_SCHEMA');
    expect(() => openSqliteStorage(join(dir, 'absent.sqlite')))
      .to.throw()
      .with.property('code', 'E_NO_REGISTRY');
  });

  it('a token is consumed once even from two connections; the second board (other keys) is refused and nothing changes', async () => {
    const a = openSqliteStorage(path, { create: true });
    const b = openSqliteStorage(path);
    const { token } = await a.enrollment.createToken('board-1', 'alice', 60_000);
    const first = await makeSimDevice('board-1');
    const second = await makeSimDevice('board-1');
    const r1 = await a.enrollment.enroll({
      deviceId: 'board-1',
      token,
      enrollmentJti: randomUUID(),
      signing: toPublicJwk(first.signing),
      encryption: toPublicJwk(first.encryption),
    });
    expect(r1).to.deep.equal({ userId: 'alice', repeated: false });
    expect(
      await rejection(
        b.enrollment.enroll({
          deviceId: 'board-1',
          token,
          enrollmentJti: randomUUID(),
          signing: toPublicJwk(second.signing),
          encryption: toPublicJwk(second.encryption),
        }),
      ),
    ).with.property('code', 'E_TOKEN_USED');
    expect((await b.devices.require('board-1')).signing?.kid).to.equal(first.signing.kid);
    expect(
      await rejection(
        b.enrollment.enroll({
          deviceId: 'board-1',
          token: 'x'.repeat(43),
          enrollmentJti: randomUUID(),
          signing: toPublicJwk(second.signing),
          encryption: toPublicJwk(second.encryption),
        }),
      ),
    ).with.property('code', 'E_TOKEN_INVALID');
    await a.close();
    await b.close();
  });

  it('after a rotate the replaced signing key verifies acks only for the grace period; delete retires every key', async () => {
    let now = 1_700_000_000_000;
    const storage = openSqliteStorage(path, { create: true, now: () => now });
    const dev = await makeSimDevice('rot-1');
    await storage.devices.add({
      id: 'rot-1',
      userId: 'alice',
      origin: 'jwks',
      signing: toPublicJwk(dev.signing),
      encryption: toPublicJwk(dev.encryption),
      state: 'provisioned',
    });
    const next = await makeSimDevice('rot-1');
    const { seq } = await storage.seq.allocate('rot-1');
    const jti = randomUUID();
    await storage.commands.record({
      jti,
      deviceId: 'rot-1',
      action: 'rotate',
      userId: 'alice',
      paramsDigest: 'd',
      seq,
      encryptionKid: dev.encryption.kid,
      sealed: 'x',
      expiresAt: now + 60_000,
    });
    const ack: AckClaims = { iss: 'rot-1', aud: 'provision-server', iat: 0, jti: randomUUID(), ref: jti, seq, status: 'applied', code: 'OK', detail: '' };
    expect(
      (await storage.commands.recordAck('rot-1', ack, [{ kind: 'keys-rotated', signing: toPublicJwk(next.signing), encryption: toPublicJwk(next.encryption) }]))
        .kind,
    ).to.equal('recorded');
    expect((await storage.commands.recordAck('rot-1', ack, [])).kind).to.equal('duplicate');
    expect((await storage.devices.require('rot-1')).encryption?.kid).to.equal(next.encryption.kid);
    expect((await storage.devices.verificationKeys('rot-1')).map((k) => k.kid).sort()).to.deep.equal([dev.signing.kid, next.signing.kid].sort());
    now += PREVIOUS_KEY_GRACE_MS + 1;
    expect((await storage.devices.verificationKeys('rot-1')).map((k) => k.kid)).to.deep.equal([next.signing.kid]);

    const del = randomUUID();
    const s2 = (await storage.seq.allocate('rot-1')).seq;
    await storage.commands.record({
      jti: del,
      deviceId: 'rot-1',
      action: 'delete',
      userId: 'alice',
      paramsDigest: 'd',
      seq: s2,
      encryptionKid: next.encryption.kid,
      sealed: 'x',
      expiresAt: now + 60_000,
    });
    const delAck = { ...ack, jti: randomUUID(), ref: del, seq: s2 };
    await storage.commands.recordAck('rot-1', delAck, ackEffectsOf((await storage.commands.get(del)) as CommandRecord, delAck));
    const gone = await storage.devices.require('rot-1');
    expect(gone.state).to.equal('decommissioned');
    expect(gone.keys.every((k) => k.status === 'retired')).to.equal(true);
    now += PREVIOUS_KEY_GRACE_MS + 1;
    expect(await storage.devices.verificationKeys('rot-1')).to.deep.equal([]);
    await storage.close();
  });
});
