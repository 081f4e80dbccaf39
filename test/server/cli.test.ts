import { expect } from 'chai';
import { generateKeyPairSync } from 'node:crypto';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { toJwkSet, toPublicJwk } from '../../protocol/index.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { SCHEMA_VERSION } from '../../server/registry/schema.js';
import { runServerCli, useInitializedDataDir } from './run-cli.js';
import { makeSimDevice, SimFleet } from './sim-fleet.js';

describe('provision-server CLI: data directory, registry, send', function () {
  this.timeout(60_000);
  const ctx = useInitializedDataDir('provision-cli-');

  it('init lays out keys, registry, server.json and a 0600 HTTP token, and refuses to run twice', async () => {
    expect((await stat(ctx.data)).mode & 0o777).to.equal(0o700);
    expect((await stat(join(ctx.data, 'keys', 'signing.jwk'))).mode & 0o777).to.equal(0o600);
    expect((await stat(join(ctx.data, 'http.token'))).mode & 0o777).to.equal(0o600);
    expect(JSON.parse(await readFile(join(ctx.data, 'server.json'), 'utf8'))).to.deep.equal({ broker: { url: ctx.broker.url }, topic_prefix: 'provision' });
    const storage = openSqliteStorage(join(ctx.data, 'registry.sqlite'));
    expect(storage.db.pragma('user_version', { simple: true })).to.equal(SCHEMA_VERSION);
    await storage.audit.append('test.event', null, {});
    expect(() => storage.db.prepare("UPDATE audit SET event = 'x'").run()).to.throw(/append-only/);
    expect(() => storage.db.prepare('DELETE FROM audit').run()).to.throw(/append-only/);
    await storage.close();
    const again = await runServerCli(['init', '--data', ctx.data]);
    expect(again.code).to.equal(2);
    expect(again.stderr).to.match(/E_KEYS_EXIST/);
  });

  it('token create prints a token once and stores only its hash', async () => {
    const r = await runServerCli(['token', 'create', '--data', ctx.data, '--device', 'tok-1', '--user', 'alice', '--ttl', '1h']);
    expect(r.code, r.stderr).to.equal(0);
    const token = r.stdout.trim();
    expect(token).to.match(/^[A-Za-z0-9_-]{43}$/);
    const db = await readFile(join(ctx.data, 'registry.sqlite'));
    expect(db.includes(Buffer.from(token))).to.equal(false);
    const storage = openSqliteStorage(join(ctx.data, 'registry.sqlite'));
    const row = storage.db.prepare("SELECT device_id, user_id, expires_at - created_at AS ttl FROM enrollment_tokens WHERE device_id = 'tok-1'").get();
    await storage.close();
    expect(row).to.deep.equal({ device_id: 'tok-1', user_id: 'alice', ttl: 3_600_000 });
  });

  it('concurrent senders never reuse a seq: four registry connections in worker threads, then three send processes', async () => {
    const storage = openSqliteStorage(join(ctx.data, 'registry.sqlite'));
    const dev = await makeSimDevice('seq-dev');
    await storage.devices.add({ id: 'seq-dev', userId: 'alice', origin: 'jwks', signing: toPublicJwk(dev.signing), encryption: toPublicJwk(dev.encryption) });
    const worker = fileURLToPath(new URL('./seq-worker.js', import.meta.url));
    const runs = await Promise.all(
      [0, 1, 2, 3].map(
        () =>
          new Promise<number[]>((resolve, reject) => {
            const w = new Worker(worker, { workerData: { path: join(ctx.data, 'registry.sqlite'), deviceId: 'seq-dev', count: 150 } });
            w.once('message', resolve);
            w.once('error', reject);
          }),
      ),
    );
    const all = runs.flat();
    expect(new Set(all).size).to.equal(600);
    expect(Math.min(...all)).to.equal(1);
    expect(Math.max(...all)).to.equal(600);

    const sends = await Promise.all([0, 1, 2].map(() => runServerCli(['send', 'seq-dev', 'selftest', '--data', ctx.data])));
    for (const s of sends) expect(s.code, s.stderr).to.equal(0);
    const seqs = (await storage.commands.list({ deviceId: 'seq-dev' })).map((c) => c.seq);
    await storage.close();
    expect(seqs).to.have.length(3);
    expect(new Set(seqs).size).to.equal(3);
    expect(Math.min(...seqs)).to.be.greaterThan(600);
  });

  it('send --wait prints the verified ack and exits 0 applied, 3 rejected, 4 failed, 5 timeout; nothing for a device without a key', async () => {
    const storage = openSqliteStorage(join(ctx.data, 'registry.sqlite'));
    const trust = JSON.parse(await readFile(join(ctx.data, 'keys', 'trust.jwks'), 'utf8'));
    const fleet = await SimFleet.connect(ctx.broker.url, { trust });
    try {
      const statuses = { applied: 'apply', rejected: 'reject', failed: 'fail', timeout: 'silent' } as const;
      const exits: Record<string, number | null> = {};
      for (const [name, behaviour] of Object.entries(statuses)) {
        const d = fleet.add(await makeSimDevice(`wait-${name}`, behaviour));
        await storage.devices.add({ id: d.id, userId: 'alice', origin: 'jwks', signing: toPublicJwk(d.signing), encryption: toPublicJwk(d.encryption) });
        const r = await runServerCli([
          'send',
          d.id,
          'update',
          '--data',
          ctx.data,
          '--set',
          'sensor.enabled=true',
          '--set',
          'sensor.name=north wall',
          '--wait',
          '--timeout',
          '2s',
        ]);
        exits[name] = r.code;
        if (name !== 'timeout') expect(JSON.parse(r.stdout)).to.include({ device_id: d.id, action: 'update', status: name });
        if (name === 'applied') expect(d.applied[0]?.params).to.deep.equal({ sensor: { enabled: true, name: 'north wall' } });
      }
      expect(exits).to.deep.equal({ applied: 0, rejected: 3, failed: 4, timeout: 5 });

      // A legacy device imported with no key at all cannot exist; one removed cannot be sent to.
      const r = await runServerCli(['send', 'no-such-device', 'rotate', '--data', ctx.data]);
      expect(r.code).to.equal(1);
      expect(r.stderr).to.match(/E_NO_DEVICE/);
    } finally {
      await fleet.close();
      await storage.close();
    }
  });

  it('send --user UID ACTION is a rollout with a summary table, exits 6 unless all applied, and rollout resume finishes the job', async () => {
    const storage = openSqliteStorage(join(ctx.data, 'registry.sqlite'));
    const trust = JSON.parse(await readFile(join(ctx.data, 'keys', 'trust.jwks'), 'utf8'));
    const fleet = await SimFleet.connect(ctx.broker.url, { trust });
    try {
      const behaviours = ['apply', 'apply', 'reject', 'silent'] as const;
      const devs = [];
      for (const [i, b] of behaviours.entries()) {
        const d = fleet.add(await makeSimDevice(`fan-cli-${i}`, b));
        await storage.devices.add({ id: d.id, userId: 'dora', origin: 'jwks', signing: toPublicJwk(d.signing), encryption: toPublicJwk(d.encryption) });
        devs.push(d);
      }
      const r = await runServerCli(['send', '--user', 'dora', 'selftest', '--data', ctx.data, '--timeout', '2s']);
      expect(r.code, r.stderr).to.equal(6);
      expect(r.stdout).to.match(/applied\s+2\n/);
      expect(r.stdout).to.match(/rejected\s+1\n/);
      expect(r.stdout).to.match(/no answer\s+1\n/);
      expect(r.stdout).to.match(/fan-cli-3\s+no answer/);
      const id = /follow it with: provision-server rollout show (\S+)/.exec(r.stdout)?.[1];
      expect(id).to.be.a('string');
      devs[3]!.behaviour = 'apply';
      // The unanswered command is re-published as sealed (same jti and seq), nothing new is sealed.
      const again = await runServerCli(['rollout', 'resume', id as string, '--data', ctx.data, '--timeout', '5s']);
      expect(again.stdout, again.stderr).to.match(/applied\s+3\n/);
      expect(again.stdout).to.match(/rejected\s+1\n/);
      expect(again.code).to.equal(6); // the rejected one stays rejected
      expect(await storage.commands.list({ fanoutId: id as string })).to.have.length(4);
      expect(devs.map((d) => d.applied.length)).to.deep.equal([1, 1, 0, 1]);
    } finally {
      await fleet.close();
      await storage.close();
    }
  });

  it('device add --jwks, list, show and remove', async () => {
    const d = await makeSimDevice('added-1');
    const jwks = join(ctx.dir, 'added.jwks');
    await writeFile(jwks, JSON.stringify(toJwkSet([d.signing, d.encryption])));
    const add = await runServerCli(['device', 'add', '--data', ctx.data, '--device', 'added-1', '--user', 'carol', '--jwks', jwks]);
    expect(add.code, add.stderr).to.equal(0);
    const again = await runServerCli(['device', 'add', '--data', ctx.data, '--device', 'added-1', '--user', 'carol', '--jwks', jwks]);
    expect(again.code).to.equal(2);
    expect(again.stderr).to.match(/E_DEVICE_EXISTS/);
    const list = await runServerCli(['device', 'list', '--data', ctx.data, '--user', 'carol', '--json']);
    expect(JSON.parse(list.stdout).map((x: { id: string }) => x.id)).to.deep.equal(['added-1']);
    const show = await runServerCli(['device', 'show', 'added-1', '--data', ctx.data]);
    expect(JSON.parse(show.stdout)).to.include({
      id: 'added-1',
      user_id: 'carol',
      state: 'registered',
      signing_kid: d.signing.kid,
      encryption_kid: d.encryption.kid,
    });
    const rm1 = await runServerCli(['device', 'remove', 'added-1', '--data', ctx.data]);
    expect(rm1.code, rm1.stderr).to.equal(0);
    const show2 = await runServerCli(['device', 'show', 'added-1', '--data', ctx.data]);
    expect(show2.code).to.equal(1);
    expect(show2.stderr).to.match(/E_NO_DEVICE/);
  });

  it("import-legacy registers the seed's user_keys/{user}/{device}_public.pem RSA keys as RSA-OAEP-256 devices and skips the rest", async () => {
    const root = join(ctx.dir, 'seed');
    const pem = (bits: number, type: 'spki' | 'pkcs1') =>
      generateKeyPairSync('rsa', { modulusLength: bits }).publicKey.export({ type, format: 'pem' }) as string;
    await mkdir(join(root, 'user_keys', 'user-1'), { recursive: true });
    await mkdir(join(root, 'user_keys', 'user-2'), { recursive: true });
    await writeFile(join(root, 'user_keys', 'user-1', 'legacy-a_public.pem'), pem(2048, 'spki'));
    await writeFile(join(root, 'user_keys', 'user-1', 'legacy-b_public.pem'), pem(2048, 'pkcs1'));
    await writeFile(join(root, 'user_keys', 'user-2', 'legacy-c_public.pem'), pem(3072, 'spki'));
    await writeFile(join(root, 'user_keys', 'user-2', 'weak_public.pem'), pem(1024, 'spki'));
    await writeFile(
      join(root, 'user_keys', 'user-2', 'ec_public.pem'),
      generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({ type: 'spki', format: 'pem' }) as string,
    );
    await writeFile(join(root, 'user_keys', 'user-2', 'notes.txt'), 'hello');
    await writeFile(join(root, 'user_keys', 'user-2', 'bad id!_public.pem'), pem(2048, 'spki'));

    const r = await runServerCli(['import-legacy', root, '--data', ctx.data]);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.match(/3 imported, 4 skipped/);
    expect(r.stderr).to.match(/weak_public\.pem: .*below 2048/);
    expect(r.stderr).to.match(/ec_public\.pem: a ec key, not RSA/);
    const storage = openSqliteStorage(join(ctx.data, 'registry.sqlite'));
    try {
      const a = await storage.devices.require('legacy-a');
      expect(a).to.include({ userId: 'user-1', state: 'registered', origin: 'legacy' });
      expect(a.encryption).to.include({ kty: 'RSA', alg: 'RSA-OAEP-256', use: 'enc' });
      expect(a.signing).to.equal(undefined);
      expect((await storage.devices.require('legacy-c')).userId).to.equal('user-2');
      expect(await storage.devices.get('weak')).to.equal(undefined);
    } finally {
      await storage.close();
    }
    // A command to a legacy device is sealed to its RSA key.
    const sent = await runServerCli(['send', 'legacy-b', 'update', '--data', ctx.data, '--params', '{"sensor":{"enabled":false}}']);
    expect(sent.code, sent.stderr).to.equal(0);
    const again = await runServerCli(['import-legacy', join(root, 'user_keys'), '--data', ctx.data]);
    expect(again.stdout).to.match(/0 imported, 7 skipped/);
  });
});
