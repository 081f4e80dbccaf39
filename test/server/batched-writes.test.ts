/**
 * The registry writes of concurrent sends are group committed (one IMMEDIATE
 * transaction per batch), a command is published only once its record is
 * committed, and one device's failure in a batch leaves the others alone.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TRUSTED_CLOCK, openCommand, toPublicJwk } from '../../protocol/index.js';
import { CommandSender } from '../../server/core/command-sender.js';
import { initServerKeys, loadServerKeys, type ServerKeys } from '../../server/keys/server-keys.js';
import { SealPool } from '../../server/core/seal-pool.js';
import { RegistryError } from '../../server/storage/errors.js';
import { openSqliteStorage, type SqliteStorage } from '../../server/storage/sqlite/index.js';
import { deviceRings } from '../helpers/keys.js';
import { makeSimDevice } from './sim-fleet.js';
import { findAsync } from '../helpers/async-array.js';

describe('server: registry writes batched per group of concurrent sends', function () {
  let dir: string;
  let path: string;
  let keys: ServerKeys;
  let storage: SqliteStorage;
  let other: SqliteStorage;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'batched-'));
    path = join(dir, 'registry.sqlite');
    await initServerKeys(join(dir, 'keys'));
    keys = await loadServerKeys(join(dir, 'keys'));
    storage = openSqliteStorage(path, { create: true });
    other = openSqliteStorage(path); // a second connection: sees only what is committed
  });
  afterEach(async () => {
    await storage.close();
    await other.close();
    await rm(dir, { recursive: true, force: true });
  });

  const addDevices = async (n: number): Promise<Awaited<ReturnType<typeof makeSimDevice>>[]> => {
    const devices = await Promise.all(Array.from({ length: n }, (_, i) => makeSimDevice(`dev-${i}`)));
    for (const d of devices)
      await storage.devices.add({ id: d.id, userId: 'alice', origin: 'jwks', signing: toPublicJwk(d.signing), encryption: toPublicJwk(d.encryption) });
    return devices;
  };

  it('16 concurrent sends: one transaction each for seqs, records and sent marks; published only after committed; every token opens', async () => {
    const devices = await addDevices(16);
    const calls = { seqs: [] as number[], records: [] as number[], sent: [] as number[] };
    const allocateMany = storage.seq.allocateMany.bind(storage.seq);
    const recordMany = storage.commands.recordMany.bind(storage.commands);
    const markSentMany = storage.commands.markSentMany.bind(storage.commands);
    storage.seq.allocateMany = (ids) => (calls.seqs.push(ids.length), allocateMany(ids));
    storage.commands.recordMany = (cs) => (calls.records.push(cs.length), recordMany(cs));
    storage.commands.markSentMany = (jtis) => (calls.sent.push(jtis.length), markSentMany(jtis));
    const published: { topic: string; token: string }[] = [];
    const sender = new CommandSender({
      storage,
      keys,
      topicPrefix: 'provision',
      publish: async (topic, token) => {
        // Durable before it leaves: the other connection already sees the record, not yet sent.
        const jti = (await findAsync(await other.commands.list({ limit: 1000 }), async (c) => token === (await other.commands.sealed(c.jti))))?.jti;
        expect(jti, 'the command is committed before it is published').to.be.a('string');
        published.push({ topic, token });
      },
    });
    const records = await Promise.all(devices.map((d) => sender.send({ deviceId: d.id, action: 'update', params: { sensor: { enabled: true } } })));
    expect(calls).to.deep.equal({ seqs: [16], records: [16], sent: [16] });
    expect(published).to.have.length(16);
    for (const [i, d] of devices.entries()) {
      const c = await other.commands.get((records[i] as { jti: string }).jti);
      expect(c?.sentAt).to.be.a('number');
      expect(c?.seq).to.equal(1);
      const token = published.find((p) => p.topic === `provision/${d.id}/command`)?.token as string;
      const opened = await openCommand(token, {
        deviceId: d.id,
        clock: TRUSTED_CLOCK,
        ...(await deviceRings(d, { signing: keys.signing, encryption: keys.encryption })),
      });
      expect(opened.claims.seq).to.equal(1);
    }
  });

  it('a decommissioned and an unknown device in a batch get their errors; the others proceed, and a failed record leaves no trace', async () => {
    const devices = await addDevices(3);
    storage.db.prepare("UPDATE devices SET state = 'decommissioned' WHERE id = ?").run('dev-1');
    const results = await storage.seq.allocateMany(['dev-0', 'dev-1', 'nope', 'dev-2']);
    expect(results[1]).to.be.instanceOf(RegistryError).with.property('code', 'E_DECOMMISSIONED');
    expect(results[2]).to.be.instanceOf(RegistryError).with.property('code', 'E_NO_DEVICE');
    expect(results.filter((r) => !(r instanceof Error)).map((r) => (r as { seq: number }).seq)).to.deep.equal([1, 1]);
    expect((await other.devices.get('dev-1'))?.nextSeq).to.equal(1);
    expect((await other.devices.get('dev-0'))?.nextSeq).to.equal(2);
    const rec = (deviceId: string, jti: string) => ({
      jti,
      deviceId,
      action: 'update',
      userId: 'alice',
      paramsDigest: 'd',
      seq: 1,
      encryptionKid: 'k',
      sealed: 'x',
      expiresAt: Date.now() + 60_000,
    });
    const recorded = await storage.commands.recordMany([rec('dev-0', 'j0'), rec('dev-2', 'j0'), rec('dev-2', 'j2')]);
    expect(recorded[0]).to.equal(true);
    expect(recorded[1]).to.be.instanceOf(Error); // the jti is taken
    expect(recorded[2]).to.equal(true);
    expect((await other.commands.get('j0'))?.deviceId).to.equal('dev-0');
    expect((await other.commands.get('j2'))?.deviceId).to.equal('dev-2');
    // Its audit row went with it (savepoint): one command.create per recorded command.
    expect((await other.audit.log({ limit: 1000 })).filter((a) => a.event === 'command.create').map((a) => a.detail.jti)).to.deep.equal(['j0', 'j2']);
    expect(devices).to.have.length(3);
  });

  it('through a pool of seal workers the tokens are the same kind and a bad input is refused with its code', async () => {
    const [d] = await addDevices(1);
    const pool = SealPool.start(2);
    try {
      const published: string[] = [];
      const sender = new CommandSender({
        storage,
        keys,
        topicPrefix: 'provision',
        seal: pool.seal,
        publish: async (_t, token) => void published.push(token),
      });
      const sent = await Promise.all([1, 2, 3].map(() => sender.send({ deviceId: 'dev-0', action: 'update', params: { sensor: { enabled: true } } })));
      expect(sent.map((c) => c.seq).sort()).to.deep.equal([1, 2, 3]);
      const rings = await deviceRings(d as Awaited<ReturnType<typeof makeSimDevice>>, { signing: keys.signing, encryption: keys.encryption });
      for (const token of published) await openCommand(token, { deviceId: 'dev-0', clock: TRUSTED_CLOCK, ...rings });
      const err = await pool
        .seal(
          { serverId: 'srv', deviceId: 'dev-0', action: 'update', userId: 'alice', params: {}, seq: 0 },
          { signer: keys.signing, recipient: toPublicJwk(d?.encryption as never) },
        )
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(err).to.have.property('code', 'E_CLAIMS');
    } finally {
      await pool.close();
    }
  });
});
