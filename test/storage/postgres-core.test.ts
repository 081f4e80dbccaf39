/**
 * The PostgreSQL storage's own concerns, against a real throwaway cluster
 * (test/helpers/pg-cluster.ts): migrations run once by concurrent openers, a
 * newer schema refused, seq/token/ack decisions race-free across two pools,
 * lost connections as E_STORAGE_UNAVAILABLE with the next call working, and
 * the SQLite registry's semantics (errors, audit rows) for devices,
 * enrollment, commands and acks, audit and releases.
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import {
  generateEncryptionKey,
  generateSigningKey,
  toPublicJwk,
  type AckClaims,
  type PublicJwk,
  type ReleaseArch,
  type ReleaseManifest,
  type ReportClaims,
} from '../../protocol/index.js';
import { RegistryError } from '../../server/storage/errors.js';
import { openPostgresStorage, type PostgresStorage } from '../../server/storage/postgres/index.js';
import { appendAudit } from '../../server/storage/postgres/audit.js';
import { PG_SCHEMA_VERSION } from '../../server/storage/postgres/schema.js';
import type { NewCommand } from '../../server/storage/records.js';
import type { AckEffect } from '../../server/storage/types.js';
import { NO_POSTGRES, postgresBin, postgresRequired, startPgCluster, type PgCluster } from '../helpers/pg-cluster.js';
import { skipBecause } from '../helpers/skip.js';

interface KeyPair {
  signing: PublicJwk;
  encryption: PublicJwk;
}

async function keyPair(): Promise<KeyPair> {
  const [s, e] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
  return { signing: toPublicJwk(s), encryption: toPublicJwk(e) };
}

async function rejection(p: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await p;
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected a rejection');
}

function releaseManifest(version: string, arch: ReleaseArch, sha256: string): ReleaseManifest {
  return {
    format: 1,
    version,
    arch,
    node: { ships: false, version: '22.0.0', abi: '127', binary_sha256: null },
    gpio: 'omit',
    snapshot: false,
    artifact: { bytes: 1000, sha256, unpacked_bytes: 2000 },
    chunks: { bytes: 61_440, count: 1, index_sha256: '00'.repeat(32) },
    created_at: '2027-01-01T00:00:00.000Z',
  };
}

function ack(ref: string, status: AckClaims['status'], extra: Partial<AckClaims> = {}): AckClaims {
  return { iss: 'd', aud: 's', iat: 1, jti: randomUUID(), ref, seq: 0, status, code: status === 'applied' ? 'OK' : 'E_X', detail: '', ...extra };
}

describe('storage: PostgreSQL core (server/storage/postgres)', function () {
  this.timeout(20_000);
  let cluster: PgCluster;
  let keys: KeyPair[];
  const opened: PostgresStorage[] = [];
  let clock = 1_800_000_000_000;
  const now = (): number => clock;

  before(async function () {
    if (!postgresBin()) {
      if (postgresRequired()) throw new Error(NO_POSTGRES);
      skipBecause(this, NO_POSTGRES);
    }
    cluster = await startPgCluster();
    keys = await Promise.all([keyPair(), keyPair(), keyPair(), keyPair()]);
  });
  after(async () => {
    for (const s of opened) await s.close().catch(() => undefined);
    await cluster?.stop();
  });

  async function fresh(url?: string): Promise<PostgresStorage> {
    const s = await openPostgresStorage(url ?? (await cluster.createDatabase()), { create: true, now });
    opened.push(s);
    return s;
  }

  async function device(s: PostgresStorage, id: string, k: KeyPair = keys[0] as KeyPair, userId: string | null = 'alice'): Promise<void> {
    await s.devices.add({ id, userId, origin: 'jwks', signing: k.signing, encryption: k.encryption, state: 'provisioned' });
  }

  function command(deviceId: string, seq: number, extra: Partial<NewCommand> = {}): NewCommand {
    return {
      jti: randomUUID(),
      deviceId,
      action: 'ping',
      userId: 'alice',
      paramsDigest: 'sha256:x',
      seq,
      encryptionKid: 'k',
      sealed: `sealed-${seq}`,
      expiresAt: clock + 60_000,
      ...extra,
    };
  }

  it('migrates a fresh database once when five open it at once; all of them work; a reopen changes nothing', async () => {
    const url = await cluster.createDatabase();
    const all = await Promise.all(Array.from({ length: 5 }, () => openPostgresStorage(url, { create: true, now })));
    opened.push(...all);
    const versions = await all[0]!.db.q<{ version: number }>('SELECT version FROM schema_migrations ORDER BY version');
    expect(versions.map((v) => v.version)).to.deep.equal(Array.from({ length: PG_SCHEMA_VERSION }, (_, i) => i + 1));
    await Promise.all(all.map((s, i) => device(s, `m-${i}`)));
    for (const s of all) expect((await s.devices.list()).map((d) => d.id)).to.deep.equal(['m-0', 'm-1', 'm-2', 'm-3', 'm-4']);
    const again = await openPostgresStorage(url, { now });
    opened.push(again);
    expect((await again.db.q('SELECT version FROM schema_migrations')).length).to.equal(PG_SCHEMA_VERSION);
    const tables = (await again.db.q<{ t: string }>("SELECT table_name AS t FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")).map(
      (r) => r.t,
    );
    expect(tables).to.deep.equal([
      'audit',
      'audit_head',
      'commands',
      'device_keys',
      'device_presence',
      'device_tags',
      'devices',
      'enrollment_tokens',
      'leases',
      'operator_sessions',
      'operator_tokens',
      'operators',
      'release_files',
      'releases',
      'rollout_targets',
      'rollouts',
      'schema_migrations',
    ]);
    const indexes = (await again.db.q<{ i: string }>("SELECT indexname AS i FROM pg_indexes WHERE schemaname = 'public'")).map((r) => r.i);
    expect(indexes).to.include.members([
      'audit_rollout',
      'audit_event',
      'releases_live',
      'rollout_targets_order',
      'commands_release',
      'device_tags_tag',
      'devices_version',
      'commands_device_created',
    ]);
    expect(again.info).to.deep.equal({ kind: 'postgres', location: url });
    expect(again.open).to.equal(true);
    await again.close();
    expect(again.open).to.equal(false);
  });

  it('audit appends inside transactions take the chain head last: two that lock one row in opposite order to their appends do not deadlock', async () => {
    const s = await fresh();
    await device(s, 'x');
    let bLocked!: () => void;
    const bHasRow = new Promise<void>((resolve) => (bLocked = resolve));
    let aAppended!: () => void;
    const aHasAppended = new Promise<void>((resolve) => (aAppended = resolve));
    // A: appends, then updates the device row B holds; B: locks the row first, then appends.
    const a = s.db.tx(async (sql) => {
      await appendAudit(sql, 1, 'test.a', 'x', {});
      aAppended();
      await bHasRow;
      await sql.run("UPDATE devices SET updated_at = updated_at + 1 WHERE id = 'x'");
    });
    const b = s.db.tx(async (sql) => {
      await aHasAppended;
      await sql.run("UPDATE devices SET updated_at = updated_at + 1 WHERE id = 'x'");
      bLocked();
      await new Promise((resolve) => setTimeout(resolve, 200));
      await appendAudit(sql, 2, 'test.b', 'x', {});
    });
    await Promise.all([a, b]);
    const rows = await s.audit.query({ event: 'test' });
    expect(rows.map((r) => r.event)).to.deep.equal(['test.b', 'test.a']);
    expect((await s.audit.verifyChain()).broken).to.equal(undefined);
  });

  it('refuses a newer schema (E_SCHEMA), an empty database without create (E_NO_REGISTRY), a missing one; hides the password', async () => {
    const migrated = await cluster.createDatabase();
    const s = await fresh(migrated);
    const url = await cluster.createDatabase();
    await s.db.run('INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)');
    const newer = await rejection(openPostgresStorage(migrated, { now }));
    expect(newer).to.be.instanceOf(RegistryError);
    expect(newer.code).to.equal('E_SCHEMA');
    expect(newer.message).to.contain(`version 99 is newer than this program's (${PG_SCHEMA_VERSION})`);
    expect((await rejection(openPostgresStorage(url, { now }))).code).to.equal('E_NO_REGISTRY');
    // Nothing was created by the refused open.
    const probe = new pg.Client({ connectionString: url });
    await probe.connect();
    expect((await probe.query("SELECT to_regclass('schema_migrations') AS t")).rows[0].t).to.equal(null);
    await probe.end();
    expect((await rejection(openPostgresStorage(url.replace(/\/[^/]+$/, '/absent_db'), { now }))).code).to.equal('E_NO_REGISTRY');
    // Trust auth accepts any password: the location never shows it.
    const withPassword = await openPostgresStorage(url.replace(/^postgres:\/\/([^@]+)@/, 'postgres://$1:s3cret@'), { create: true, now });
    opened.push(withPassword);
    expect(withPassword.info.location).to.include(':***@').and.not.include('s3cret');
  });

  it('devices: add, E_DEVICE_EXISTS (one of two concurrent adds), replace, get/require/list filters, tags, remove', async () => {
    const s = await fresh();
    const results = await Promise.allSettled([device(s, 'd-1'), device(s, 'd-1', keys[1])]);
    expect(results.filter((r) => r.status === 'fulfilled')).to.have.length(1);
    const refused = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect(refused.reason).to.have.property('code', 'E_DEVICE_EXISTS');
    expect((refused.reason as Error).message).to.equal('device d-1 is already registered (provisioned); remove it first or pass --replace');
    await device(s, 'd-2', keys[1], 'bob');
    await s.devices.add({ id: 'd-3', userId: null, origin: 'host-keys', encryption: keys[2]!.encryption });
    const d1 = await s.devices.require('d-1');
    expect(d1.state).to.equal('provisioned');
    expect(d1.nextSeq).to.equal(1);
    expect(d1.signing?.kid).to.be.a('string');
    expect(d1.keys.map((k) => k.status)).to.deep.equal(['current', 'current']);
    expect((await s.devices.require('d-3')).signing).to.equal(undefined);
    expect(await s.devices.get('nope')).to.equal(undefined);
    const missing = await rejection(s.devices.require('nope'));
    expect(missing).to.be.instanceOf(RegistryError);
    expect(missing.code).to.equal('E_NO_DEVICE');
    expect(missing.message).to.equal('device nope is not registered');

    expect((await s.devices.list({ userId: 'bob' })).map((d) => d.id)).to.deep.equal(['d-2']);
    expect((await s.devices.list({ states: ['registered'] })).map((d) => d.id)).to.deep.equal(['d-3']);
    expect(await s.devices.list({ states: [] })).to.deep.equal([]);

    expect(await s.devices.addTags('d-1', ['lab', 'floor:2', 'lab'])).to.deep.equal(['floor:2', 'lab']);
    expect(await s.devices.addTags('d-2', ['lab'])).to.deep.equal(['lab']);
    expect((await rejection(s.devices.addTags('d-1', ['ok', '-bad']))).code).to.equal('E_BAD_TAG');
    expect(await s.devices.tagsOf('d-1')).to.deep.equal(['floor:2', 'lab']);
    expect((await rejection(s.devices.addTags('nope', ['lab']))).code).to.equal('E_NO_DEVICE');
    expect(await s.devices.listTags()).to.deep.equal([
      { tag: 'floor:2', devices: 1 },
      { tag: 'lab', devices: 2 },
    ]);
    expect((await s.devices.list({ tag: 'lab' })).map((d) => d.id)).to.deep.equal(['d-1', 'd-2']);
    expect((await s.devices.list({ tag: 'lab', userId: 'alice' })).map((d) => d.id)).to.deep.equal(['d-1']);
    expect((await rejection(s.devices.list({ tag: '' }))).code).to.equal('E_BAD_TAG');
    expect(await s.devices.removeTags('d-1', ['lab', 'absent'])).to.deep.equal(['floor:2']);
    expect((await s.devices.require('d-1')).tags).to.deep.equal(['floor:2']);

    // A flagged device re-added with replace: flag cleared, the new keys current, the old ones previous.
    await s.db.run(`UPDATE devices SET flagged_at = 5, flag = '{"event":"security.ack_contradiction","jti":"j"}' WHERE id = 'd-1'`);
    expect((await s.devices.require('d-1')).flag).to.deep.equal({ at: 5, event: 'security.ack_contradiction', detail: { jti: 'j' } });
    const replaced = await s.devices.add(
      { id: 'd-1', userId: 'carol', origin: 'jwks', signing: keys[3]!.signing, encryption: keys[3]!.encryption },
      { replace: true },
    );
    expect(replaced.flag).to.equal(null);
    expect(replaced.userId).to.equal('carol');
    expect(replaced.state).to.equal('registered');
    expect(replaced.signing?.kid).to.equal(keys[3]!.signing.kid);
    expect(replaced.keys.filter((k) => k.status === 'previous').map((k) => k.kid)).to.have.members([keys[0]!.signing.kid, keys[0]!.encryption.kid]);

    await s.enrollment.createToken('d-2', 'bob', 60_000);
    await s.devices.remove('d-2');
    expect(await s.devices.get('d-2')).to.equal(undefined);
    expect(await s.enrollment.listTokens({ deviceId: 'd-2' })).to.deep.equal([]);
    expect(await s.devices.listTags()).to.deep.equal([{ tag: 'floor:2', devices: 1 }]);
    expect((await rejection(s.devices.remove('d-2'))).code).to.equal('E_NO_DEVICE');
    const events = (await s.audit.log()).map((e) => e.event);
    expect(events).to.deep.equal([
      'device.add',
      'device.add',
      'device.add',
      'device.tag.add',
      'device.tag.add',
      'device.tag.remove',
      'device.add',
      'token.create',
      'device.remove',
    ]);
    const tagAdd = (await s.audit.query({ event: 'device.tag.add', deviceId: 'd-1' }))[0];
    expect(tagAdd?.detail).to.deep.equal({ tags: ['lab', 'floor:2'] });
  });

  it('devices: recordReport (recorded, duplicate, stale by position; under concurrency one wins) and report verification keys', async () => {
    const a = await fresh();
    const b = await openPostgresStorage(a.info.location, { now });
    opened.push(b);
    await device(a, 'p-1');
    const report = (n: number, extra: Partial<ReportClaims> = {}): ReportClaims => ({
      iss: 'p-1',
      aud: 's',
      iat: 1,
      jti: randomUUID(),
      reason: n === 1 ? 'connect' : 'interval',
      session: 'sess',
      conn: 1,
      run: 1,
      n,
      interval_s: 60,
      agent_version: '1.2.3',
      node_version: 'v22',
      last_seq: n,
      kids: { sig: 's', enc: 'e' },
      settings_digest: `sha256:${'0'.repeat(64)}`,
      uptime_s: n,
      selftest: null,
      arch: 'arm64',
      ...extra,
    });
    const r1 = report(1);
    expect(await a.devices.recordReport('p-1', r1)).to.deep.equal({ kind: 'recorded', presence: 'online' });
    expect(await b.devices.recordReport('p-1', r1)).to.deep.equal({ kind: 'duplicate' });
    // Two reports at once from two processes: the newer is kept whichever commits first.
    const [r2, r3] = [report(2), report(3)];
    const outcomes = await Promise.all([a.devices.recordReport('p-1', r3), b.devices.recordReport('p-1', r2)]);
    expect(outcomes[0]).to.deep.equal({ kind: 'recorded', presence: 'online' });
    const d = await a.devices.require('p-1');
    expect(d.presence).to.deep.include({ lastSeenAt: clock, reported: 'online', session: 'sess', conn: 1, intervalS: 60 });
    expect(d.presence.state?.last_seq).to.equal(3);
    expect(d).to.deep.include({ arch: 'arm64', agentVersion: '1.2.3' });
    expect(await a.devices.recordReport('p-1', report(2))).to.deep.equal({ kind: 'stale' });
    expect(await a.devices.recordReport('p-1', report(0, { reason: 'offline', last_seq: 3 }))).to.deep.equal({ kind: 'recorded', presence: 'offline' });
    expect((await a.devices.require('p-1')).presence.reported).to.equal('offline');
    expect((await rejection(a.devices.recordReport('nope', report(1)))).code).to.equal('E_NO_DEVICE');
    expect((await a.devices.reportVerificationKeys('p-1')).map((k) => k.kid)).to.deep.equal([keys[0]!.signing.kid]);
  });

  it('enrollment: a token is consumed once by two concurrent enrollments (other keys); repeat, invalid, other device, expired; listings', async () => {
    const a = await fresh();
    const b = await openPostgresStorage(a.info.location, { now });
    opened.push(b);
    const { token, expiresAt } = await a.enrollment.createToken('e-1', 'alice', 60_000);
    expect(expiresAt).to.equal(clock + 60_000);
    expect((await a.enrollment.pendingEnrollments()).map((t) => [t.deviceId, t.status, t.deviceState])).to.deep.equal([['e-1', 'valid', null]]);
    const input = (s: PostgresStorage, k: KeyPair): Promise<{ userId: string; repeated: boolean }> =>
      s.enrollment.enroll({ deviceId: 'e-1', token, enrollmentJti: randomUUID(), signing: k.signing, encryption: k.encryption });
    const results = await Promise.allSettled([input(a, keys[0]!), input(b, keys[1]!)]);
    const won = results.findIndex((r) => r.status === 'fulfilled');
    expect(results.filter((r) => r.status === 'fulfilled')).to.have.length(1);
    expect((results[won] as PromiseFulfilledResult<unknown>).value).to.deep.equal({ userId: 'alice', repeated: false });
    expect((results[1 - won] as PromiseRejectedResult).reason).to.have.property('code', 'E_TOKEN_USED');
    const winner = keys[won] as KeyPair;
    const d = await a.devices.require('e-1');
    expect(d.state).to.equal('enrolling');
    expect(d.origin).to.equal('enrollment');
    expect(d.enrolledAt).to.equal(clock);
    expect(d.signing?.kid).to.equal(winner.signing.kid);
    expect(d.encryption?.kid).to.equal(winner.encryption.kid);
    // The same board repeating its enrollment with the same keys: answered again, nothing changes.
    expect(await input(b, winner)).to.deep.equal({ userId: 'alice', repeated: true });
    expect((await rejection(input(a, keys[2]!))).code).to.equal('E_TOKEN_USED');
    expect(
      (
        await rejection(
          a.enrollment.enroll({ deviceId: 'e-1', token: 'x'.repeat(43), enrollmentJti: 'j', signing: winner.signing, encryption: winner.encryption }),
        )
      ).code,
    ).to.equal('E_TOKEN_INVALID');
    const other = await a.enrollment.createToken('e-2', 'bob', 60_000);
    const wrongDevice = await rejection(
      a.enrollment.enroll({ deviceId: 'e-1', token: other.token, enrollmentJti: 'j', signing: winner.signing, encryption: winner.encryption }),
    );
    expect(wrongDevice.code).to.equal('E_TOKEN_DEVICE');
    const late = await a.enrollment.createToken('e-3', 'bob', 1000);
    clock += 1000;
    const expired = await rejection(
      a.enrollment.enroll({ deviceId: 'e-3', token: late.token, enrollmentJti: 'j', signing: winner.signing, encryption: winner.encryption }),
    );
    expect(expired.code).to.equal('E_TOKEN_EXPIRED');
    expect(await a.devices.get('e-3')).to.equal(undefined);
    expect((await a.enrollment.listTokens()).map((t) => [t.deviceId, t.status])).to.have.deep.members([
      ['e-1', 'used'],
      ['e-2', 'valid'],
      ['e-3', 'expired'],
    ]);
    expect((await a.enrollment.listTokens({ deviceId: 'e-1' }))[0]).to.include({ userId: 'alice', status: 'used', deviceState: 'enrolling' });
    expect((await a.enrollment.pendingEnrollments()).map((t) => [t.deviceId, t.status])).to.deep.equal([
      ['e-2', 'valid'],
      ['e-3', 'expired'],
    ]);
    const audit = (await a.audit.log({ deviceId: 'e-1' })).map((e) => e.event);
    expect(audit).to.deep.equal(['token.create', 'device.enroll', 'device.enroll.repeat']);
  });

  it('seq: two storages x 200 concurrent allocations on one device hand out 400 distinct seqs; allocateMany gives errors in place', async () => {
    const a = await fresh();
    const b = await openPostgresStorage(a.info.location, { now });
    opened.push(b);
    await device(a, 's-1');
    const all = await Promise.all([...Array.from({ length: 200 }, () => a.seq.allocate('s-1')), ...Array.from({ length: 200 }, () => b.seq.allocate('s-1'))]);
    const seqs = all.map((r) => r.seq).sort((x, y) => x - y);
    expect(seqs).to.deep.equal(Array.from({ length: 400 }, (_, i) => i + 1));
    expect(all.every((r) => r.device.id === 's-1' && r.device.nextSeq === r.seq && r.device.encryption !== undefined)).to.equal(true);
    expect((await a.devices.require('s-1')).nextSeq).to.equal(401);

    await device(a, 's-2');
    await a.devices.add({ id: 's-3', userId: null, origin: 'jwks', encryption: keys[1]!.encryption, state: 'decommissioned' });
    const many = await b.seq.allocateMany(['s-2', 'absent', 's-1', 's-3', 's-2']);
    expect(many.map((r) => (r instanceof RegistryError ? r.code : r.seq))).to.deep.equal([1, 'E_NO_DEVICE', 401, 'E_DECOMMISSIONED', 2]);
    expect((await rejection(a.seq.allocate('s-3'))).message).to.equal('device s-3 is decommissioned; provision it again with a new token or bundle');
    expect((await rejection(a.seq.allocate('absent'))).code).to.equal('E_NO_DEVICE');
    // A device without a current encryption key (retired) is E_NO_KEY.
    await a.db.run("UPDATE device_keys SET status = 'retired' WHERE device_id = 's-2'");
    expect((await rejection(a.seq.allocate('s-2'))).code).to.equal('E_NO_KEY');
    expect((await a.devices.require('s-2')).nextSeq).to.equal(3);
  });

  it('commands: record, recordMany (one failing alone), markSent(Many), get, sealed, list', async () => {
    const s = await fresh();
    await device(s, 'c-1');
    const first = command('c-1', 1, { fanoutId: 'f-1', bindUser: 'bob', releaseSha256: 'ab'.repeat(32) });
    await s.commands.record(first);
    const dup = command('c-1', 1);
    const ok2 = command('c-1', 2);
    clock += 10;
    const ok3 = command('c-1', 3, { fanoutId: 'f-1' });
    const results = await s.commands.recordMany([ok2, dup, ok3]);
    expect(results[0]).to.equal(true);
    expect(results[1]).to.be.instanceOf(Error);
    expect((results[1] as Error).message).to.match(/duplicate key/);
    expect(results[2]).to.equal(true);
    expect(await s.commands.recordMany([])).to.deep.equal([]);
    expect(await s.commands.get(dup.jti)).to.equal(undefined);
    const got = await s.commands.get(first.jti);
    expect(got).to.deep.include({ jti: first.jti, deviceId: 'c-1', seq: 1, fanoutId: 'f-1', sentAt: null, ackStatus: null, releaseSha256: 'ab'.repeat(32) });
    expect(await s.commands.sealed(first.jti)).to.equal('sealed-1');
    expect(await s.commands.sealed('nope')).to.equal(undefined);
    await s.commands.markSent(first.jti);
    clock += 5;
    await s.commands.markSentMany([ok2.jti, ok3.jti]);
    await s.commands.markSentMany([]);
    expect((await s.commands.get(first.jti))?.sentAt).to.equal(clock - 5);
    expect((await s.commands.get(ok3.jti))?.sentAt).to.equal(clock);
    expect((await s.commands.list()).map((c) => c.seq)).to.deep.equal([3, 2, 1]);
    expect((await s.commands.list({ deviceId: 'c-1', limit: 2 })).map((c) => c.seq)).to.deep.equal([3, 2]);
    expect((await s.commands.list({ fanoutId: 'f-1' })).map((c) => c.seq)).to.deep.equal([3, 1]);
    expect((await s.audit.query({ event: 'command.create' })).map((e) => e.detail.seq)).to.deep.equal([1, 2, 3]);
    expect((await s.audit.query({ event: 'command.create' }))[0]?.detail).to.deep.equal({
      jti: first.jti,
      action: 'ping',
      seq: 1,
      user_id: 'alice',
      params_digest: 'sha256:x',
      fanout_id: 'f-1',
    });
  });

  it('recordAck: unknown, recorded, duplicate, contradiction (flag, audit, no effects); two concurrent acks of one command record once', async () => {
    const a = await fresh();
    const b = await openPostgresStorage(a.info.location, { now });
    opened.push(b);
    await device(a, 'k-1');
    // Effects that would show: applied only for a new applied ack.
    const effectsOf: AckEffect[] = [{ kind: 'bind-user', userId: 'mallory' }];
    expect(await a.commands.recordAck('k-1', ack('nope', 'applied'), effectsOf)).to.deep.equal({ kind: 'unknown-command' });
    const refused = command('k-1', 1);
    await a.commands.record(refused);
    // Another device's ack of it is unknown too.
    expect((await a.commands.recordAck('k-2', ack(refused.jti, 'rejected'), effectsOf)).kind).to.equal('unknown-command');
    const rejected = ack(refused.jti, 'rejected', { code: 'E_POLICY', detail: 'no' });
    const outcomes = await Promise.all([a.commands.recordAck('k-1', rejected, effectsOf), b.commands.recordAck('k-1', rejected, effectsOf)]);
    expect(outcomes.map((o) => o.kind).sort()).to.deep.equal(['duplicate', 'recorded']);
    const rec = outcomes.find((o) => o.kind === 'recorded') as { command: { ackStatus: string; ackCode: string; ackedAt: number; ackJti: string } };
    expect(rec.command).to.deep.include({ ackStatus: 'rejected', ackCode: 'E_POLICY', ackedAt: clock, ackJti: rejected.jti });
    expect((await a.devices.require('k-1')).userId, 'a refusal applies no effects').to.not.equal('mallory');
    // Applied after a recorded refusal: a contradiction, audited, the device flagged, no effects.
    const claim = ack(refused.jti, 'applied');
    const contradiction = await b.commands.recordAck('k-1', claim, effectsOf);
    expect(contradiction.kind).to.equal('contradiction');
    expect((await a.devices.require('k-1')).userId, 'a contradiction applies no effects').to.not.equal('mallory');
    const detail = {
      jti: refused.jti,
      action: 'ping',
      seq: 1,
      recorded: { status: 'rejected', code: 'E_POLICY', ack_jti: rejected.jti },
      claimed: { status: 'applied', code: 'OK', ack_jti: claim.jti },
      effects: 'not applied',
    };
    const audited = await a.audit.query({ event: 'security' });
    expect(audited.map((e) => [e.event, e.deviceId, e.detail])).to.deep.equal([['security.ack_contradiction', 'k-1', detail]]);
    expect((await a.devices.require('k-1')).flag).to.deep.equal({ at: clock, event: 'security.ack_contradiction', detail });
    expect((await a.commands.get(refused.jti))?.ackStatus).to.equal('rejected');
    const commandAcks = await a.audit.query({ event: 'command.ack' });
    expect(commandAcks.map((e) => e.detail)).to.deep.equal([
      { jti: refused.jti, action: 'ping', seq: 1, status: 'rejected', code: 'E_POLICY', ack_jti: rejected.jti },
    ]);
    // The effects apply once, for a new applied ack only (not for its duplicates).
    const applied = command('k-1', 2, { bindUser: 'bob' });
    await a.commands.record(applied);
    expect((await a.commands.recordAck('k-1', ack(applied.jti, 'applied'), [{ kind: 'bind-user', userId: 'bob' }])).kind).to.equal('recorded');
    expect((await a.devices.require('k-1')).userId).to.equal('bob');
    expect((await b.commands.recordAck('k-1', ack(applied.jti, 'applied'), [{ kind: 'bind-user', userId: 'carol' }])).kind).to.equal('duplicate');
    expect((await b.commands.recordAck('k-1', ack(applied.jti, 'rejected', { code: 'E_REPLAY' }), [{ kind: 'bind-user', userId: 'carol' }])).kind).to.equal(
      'duplicate',
    );
    expect((await a.devices.require('k-1')).userId).to.equal('bob');
  });

  it('recordAck effects: bind-user + provisioned, keys rotated, decommissioned, upgraded (version and the release arch), in the ack transaction', async () => {
    const s = await fresh();
    await s.devices.add({ id: 'x-1', userId: null, origin: 'enrollment', signing: keys[0]!.signing, encryption: keys[0]!.encryption, state: 'enrolling' });
    const apply = (...effects: AckEffect[]): AckEffect[] => effects;

    const request = command('x-1', 1, { action: 'request', bindUser: 'bob' });
    await s.commands.record(request);
    clock += 1;
    await s.commands.recordAck('x-1', ack(request.jti, 'applied'), apply({ kind: 'bind-user', userId: 'bob' }, { kind: 'provisioned', userId: 'bob' }));
    let d = await s.devices.require('x-1');
    expect(d).to.deep.include({ userId: 'bob', state: 'provisioned', confirmedAt: clock, updatedAt: clock });

    const rotate = command('x-1', 2, { action: 'rotate' });
    await s.commands.record(rotate);
    await s.commands.recordAck('x-1', ack(rotate.jti, 'applied'), apply({ kind: 'keys-rotated', signing: keys[1]!.signing, encryption: keys[1]!.encryption }));
    d = await s.devices.require('x-1');
    expect(d.signing?.kid).to.equal(keys[1]!.signing.kid);
    expect(d.encryption?.kid).to.equal(keys[1]!.encryption.kid);
    expect(d.keys.filter((k) => k.status === 'previous').map((k) => k.kid)).to.have.members([keys[0]!.signing.kid, keys[0]!.encryption.kid]);
    expect((await s.devices.verificationKeys('x-1')).map((k) => k.kid)).to.have.members([keys[0]!.signing.kid, keys[1]!.signing.kid]);
    clock += 10 * 60 * 1000 + 1;
    expect((await s.devices.verificationKeys('x-1')).map((k) => k.kid)).to.deep.equal([keys[1]!.signing.kid]);

    // A rotate ack claiming other keys later: a contradiction naming them.
    const other = ack(rotate.jti, 'applied', { result: { keys: { keys: [keys[2]!.signing, keys[2]!.encryption] } } });
    expect(
      (await s.commands.recordAck('x-1', other, apply({ kind: 'keys-rotated', signing: keys[2]!.signing, encryption: keys[2]!.encryption }))).kind,
    ).to.equal('contradiction');
    const flagged = await s.devices.require('x-1');
    expect(flagged.flag?.detail.claimed_keys).to.deep.equal({ signing_kid: keys[2]!.signing.kid, encryption_kid: keys[2]!.encryption.kid });
    expect(flagged.signing?.kid).to.equal(keys[1]!.signing.kid);

    // An upgrade: the version it reports and the arch of the release it named.
    const sha = 'cd'.repeat(32);
    const manifest = releaseManifest('2.0.0', 'arm64', sha);
    await s.releases.add(manifest, 'jws', '/data/releases/2.0.0-arm64');
    const upgrade = command('x-1', 3, { action: 'upgrade', releaseSha256: sha });
    await s.commands.record(upgrade);
    await s.commands.recordAck('x-1', ack(upgrade.jti, 'applied', { result: { version: '2.0.0' } }), apply({ kind: 'upgraded', version: '2.0.0' }));
    d = await s.devices.require('x-1');
    expect(d).to.deep.include({ agentVersion: '2.0.0', arch: 'arm64' });
    expect((await s.audit.query({ event: 'device.upgraded' }))[0]?.detail).to.deep.equal({ jti: upgrade.jti, version: '2.0.0', arch: 'arm64' });

    const del = command('x-1', 5, { action: 'delete' });
    await s.commands.record(del);
    await s.commands.recordAck('x-1', ack(del.jti, 'applied'), apply({ kind: 'decommissioned' }));
    d = await s.devices.require('x-1');
    expect(d.state).to.equal('decommissioned');
    expect(d.decommissionedAt).to.equal(clock);
    expect(d.signing).to.equal(undefined);
    expect(d.keys.every((k) => k.status === 'retired' && k.retiredAt !== null)).to.equal(true);
    const events = (await s.audit.log({ deviceId: 'x-1' })).map((e) => e.event).filter((e) => e.startsWith('device.') || e.startsWith('security.'));
    expect(events).to.deep.equal([
      'device.add',
      'device.provisioned',
      'device.rotate',
      'security.ack_contradiction',
      'device.upgraded',
      'device.decommissioned',
    ]);
  });

  it('audit: append, log, query filters, lastId, eventsSince; append-only', async () => {
    const s = await fresh();
    expect(await s.audit.lastId()).to.equal(0);
    await s.audit.append('rollout.create', null, { rollout_id: 'r-1' });
    clock += 100;
    await s.audit.append('command.create', 'a-1', { fanout_id: 'r-1', seq: 1 });
    await s.audit.append('rollout_x.other', 'a-2', { rollout_id: 'r-2' });
    clock += 100;
    await s.audit.append('rollout.pause', null, { rollout_id: 'r-1', n: 2 });
    await s.audit.append('command.ack', 'a-1');
    const last = await s.audit.lastId();
    expect(last).to.equal(5);
    expect((await s.audit.log()).map((e) => e.id)).to.deep.equal([1, 2, 3, 4, 5]);
    expect((await s.audit.log({ limit: 2 })).map((e) => e.event)).to.deep.equal(['rollout.pause', 'command.ack']);
    expect((await s.audit.log({ deviceId: 'a-1' })).map((e) => e.event)).to.deep.equal(['command.create', 'command.ack']);
    expect((await s.audit.query({ rolloutId: 'r-1' })).map((e) => e.id)).to.deep.equal([1, 2, 4]);
    expect((await s.audit.query({ event: 'rollout' })).map((e) => e.event)).to.deep.equal(['rollout.create', 'rollout.pause']);
    expect((await s.audit.query({ event: 'rollout_x' })).map((e) => e.event)).to.deep.equal(['rollout_x.other']);
    // `_` and `%` are not wildcards.
    expect(await s.audit.query({ event: 'rollout%' })).to.deep.equal([]);
    expect((await s.audit.query({ since: clock - 99, until: clock })).map((e) => e.id)).to.deep.equal([4, 5]);
    expect((await s.audit.query({ until: clock - 200 })).map((e) => e.id)).to.deep.equal([1]);
    expect((await s.audit.query({ limit: 1 })).map((e) => e.id)).to.deep.equal([5]);
    const r = (await s.audit.query({ rolloutId: 'r-1', event: 'rollout', limit: 1 }))[0];
    expect(r).to.deep.equal({ id: 4, at: clock, event: 'rollout.pause', deviceId: null, detail: { rollout_id: 'r-1', n: 2 } });
    expect((await s.audit.eventsSince(0, last, 'rollout.', 10)).map((e) => e.id)).to.deep.equal([1, 4]);
    expect((await s.audit.eventsSince(1, last, 'rollout.', 10)).map((e) => e.id)).to.deep.equal([4]);
    expect((await s.audit.eventsSince(0, 3, 'rollout.', 10)).map((e) => e.id)).to.deep.equal([1]);
    expect((await s.audit.eventsSince(0, last, 'rollout.', 1)).map((e) => e.id)).to.deep.equal([1]);
    expect((await s.audit.eventsSince(0, last, 'rollout_', 10)).map((e) => e.id)).to.deep.equal([3]);
    for (const statement of ["UPDATE audit SET event = 'x'", 'DELETE FROM audit', 'TRUNCATE audit']) {
      expect((await rejection(s.db.run(statement))).message).to.equal('the audit log is append-only');
    }
    expect(await s.audit.lastId()).to.equal(5);
  });

  it('releases: add (E_RELEASE_EXISTS, also when two add at once), list/get/bySha256/require, inUse, markRemoved, upgradeInFlight', async () => {
    const s = await fresh();
    const m = releaseManifest;
    const sha1 = '11'.repeat(32);
    const both = await Promise.allSettled([
      s.releases.add(m('1.0.0', 'arm64', sha1), 'jws-a', '/r/a'),
      s.releases.add(m('1.0.0', 'arm64', sha1), 'jws-b', '/r/b'),
    ]);
    expect(both.filter((r) => r.status === 'fulfilled')).to.have.length(1);
    const refused = (both.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason as Error & { code: string };
    expect(refused.code).to.equal('E_RELEASE_EXISTS');
    expect(refused.message).to.equal('release 1.0.0 for arm64 already exists; remove it first');
    clock += 1;
    const armv7 = await s.releases.add(m('1.0.0', 'armv7', '22'.repeat(32)), 'jws', '/r/c');
    expect(armv7).to.deep.include({
      version: '1.0.0',
      arch: 'armv7',
      bytes: 1000,
      sha256: '22'.repeat(32),
      manifest: 'jws',
      dir: '/r/c',
      addedAt: clock,
      removedAt: null,
    });
    expect(armv7.id).to.be.a('number');
    expect((await s.releases.list()).map((r) => r.arch)).to.deep.equal(['armv7', 'arm64']);
    expect((await s.releases.list({ version: '1.0.0' })).map((r) => r.arch)).to.deep.equal(['arm64', 'armv7']);
    expect((await s.releases.get('1.0.0', 'arm64'))?.sha256).to.equal(sha1);
    expect(await s.releases.get('1.0.0', 'x64')).to.equal(undefined);
    expect((await s.releases.bySha256(sha1))?.arch).to.equal('arm64');
    expect((await s.releases.require('1.0.0', 'armv7')).id).to.equal(armv7.id);
    expect((await rejection(s.releases.require('1.0.0'))).code).to.equal('E_USAGE');
    expect((await rejection(s.releases.require('1.0.0', 'x64'))).message).to.equal('release 1.0.0 has no x64 build (it has: arm64, armv7)');
    expect((await rejection(s.releases.require('9.9.9'))).code).to.equal('E_NO_RELEASE');

    const arm64 = (await s.releases.get('1.0.0', 'arm64'))!;
    expect(await s.releases.inUse(arm64)).to.equal(undefined);
    // A running upgrade rollout to the version keeps every build of it.
    await s.db.run(
      `INSERT INTO rollouts (id, created_at, action, params, selector, ttl_s, deadline_at, abort_min, concurrency, state, updated_at)
       VALUES ('ro-1', 0, 'upgrade', '{"release":"1.0.0"}', '{}', 60, 0, 1, 1, 'running', 0)`,
    );
    expect(await s.releases.inUse(arm64)).to.equal('rollout(s) ro-1 upgrade to 1.0.0: cancel them first');
    const inUse = await rejection(s.releases.markRemoved(arm64));
    expect(inUse.code).to.equal('E_RELEASE_IN_USE');
    expect(inUse.message).to.equal('release 1.0.0 (arm64) is in use: rollout(s) ro-1 upgrade to 1.0.0: cancel them first');
    await s.db.run("UPDATE rollouts SET state = 'cancelled', finished_at = 1 WHERE id = 'ro-1'");

    // An upgrade command for the artifact, unanswered: in flight (the chunk server serves it once sent).
    await device(s, 'u-1');
    const up = command('u-1', 1, { action: 'upgrade', releaseSha256: sha1 });
    await s.commands.record(up);
    expect(await s.releases.inUse(arm64)).to.equal('upgrade commands to u-1 are in flight (unanswered)');
    expect(await s.releases.upgradeInFlight('u-1', sha1)).to.equal(false);
    await s.commands.markSent(up.jti);
    expect(await s.releases.upgradeInFlight('u-1', sha1)).to.equal(true);
    expect(await s.releases.upgradeInFlight('u-2', sha1)).to.equal(false);
    clock += 60_000 + 6 * 3600 * 1000;
    expect(await s.releases.upgradeInFlight('u-1', sha1)).to.equal(false);
    expect(await s.releases.inUse(arm64)).to.equal(undefined);
    await s.releases.markRemoved(arm64);
    expect(await s.releases.get('1.0.0', 'arm64')).to.equal(undefined);
    expect(await s.releases.bySha256(sha1)).to.equal(undefined);
    // Removed: the same version and arch may be added again; the old row stays for the audit.
    await s.releases.add(m('1.0.0', 'arm64', '33'.repeat(32)), 'jws', '/r/d');
    expect((await s.db.q('SELECT id FROM releases')).length).to.equal(3);
    expect((await s.audit.query({ event: 'release' })).map((e) => e.event)).to.deep.equal(['release.add', 'release.add', 'release.remove', 'release.add']);
  });

  it('a lost connection fails that call with E_STORAGE_UNAVAILABLE (logged, never thrown); the next call works; an unreachable server too', async () => {
    const warnings: string[] = [];
    const url = await cluster.createDatabase();
    const s = await openPostgresStorage(url, { create: true, now, log: { warn: (m) => warnings.push(m) } });
    opened.push(s);
    await device(s, 'l-1');
    const killer = new pg.Client({ connectionString: url });
    await killer.connect();
    const terminate = (): Promise<unknown> =>
      killer.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()');
    try {
      // Cut in the middle of a statement, and of a transaction.
      const slow = rejection(s.db.q('SELECT pg_sleep(10)'));
      const inTx = rejection(s.db.tx((sql) => sql.q('SELECT pg_sleep(10)')));
      await new Promise((r) => setTimeout(r, 300));
      await terminate();
      for (const p of [slow, inTx]) {
        const err = await p;
        expect(err).to.be.instanceOf(RegistryError);
        expect(err.code).to.equal('E_STORAGE_UNAVAILABLE');
        expect(err.message).to.match(/^the registry database is unavailable: /);
      }
      expect((await s.seq.allocate('l-1')).seq).to.equal(1);
      // Idle connections cut: the pool's 'error' is logged, and the next calls take fresh connections.
      await Promise.all([s.devices.list(), s.devices.list(), s.audit.lastId()]);
      await terminate();
      await new Promise((r) => setTimeout(r, 200));
      expect(warnings).to.include('registry.db.error');
      expect((await s.seq.allocate('l-1')).seq).to.equal(2);
      expect(s.pool.totalCount).to.be.at.most(10);
    } finally {
      await killer.end();
    }
    // Nothing listens: refused, as E_STORAGE_UNAVAILABLE.
    const closedPort = url.replace(/:(\d+)\//, ':1/');
    const refused = await rejection(openPostgresStorage(closedPort, { create: true, now }));
    expect(refused.code).to.equal('E_STORAGE_UNAVAILABLE');
  });
});
