/**
 * Upgrades seen from the server, over a real broker (aedes in process) with
 * simulated boards that ack with sealed acks: a rollout of an upgrade to 200
 * boards where 20% roll back (their new release failed the health gate)
 * aborts within one rate step, `rolled_back` counting as a failure; the
 * boards that applied it have their new version and arch recorded. Then the
 * HTTP API: GET /releases, an upgrade to one device by release, a refusal
 * when the architecture is unknown, the upgrade phase of a report in
 * GET /devices/ID and `device list`.
 */
import { expect } from 'chai';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { sealAck, toPublicJwk, type PublicJwk } from '../../protocol/index.js';
import { loadReleaseKey } from '../../server/keys/release-key.js';
import { addReleaseFromTree } from '../../server/releases/store.js';
import { planRollout, startRollout } from '../../server/rollouts/plan.js';
import { rolloutView } from '../../server/rollouts/rollout-views.js';
import { eventually, makeSimDevice, type SimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { makeTree } from './release-tree.js';
import { runServerCli } from './run-cli.js';
import { findAsync } from '../helpers/async-array.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const BOARDS = 200;

describe('server: a rollout of an upgrade to 200 simulated boards, 20% rolling back, and upgrades over the HTTP API', function () {
  this.timeout(180_000);
  let f: Fixture;
  const devices: SimDevice[] = [];
  let token: string;
  let base: string;

  before(async () => {
    f = await startFixture({ http: { host: '127.0.0.1', port: 0 } });
    base = `http://127.0.0.1:${f.server.http?.port}`;
    token = (await readFile(join(f.dataDir, 'http.token'), 'utf8')).trim();
    const storage = f.server.data.storage;
    const tree = await makeTree(join(f.dir, 'tree'), { version: '0.2.0', payload: 20_000 });
    await addReleaseFromTree(storage, f.dataDir, tree, { agentOnly: true, key: await loadReleaseKey(f.dataDir) });
    for (let i = 0; i < BOARDS; i += 50)
      devices.push(...(await Promise.all(Array.from({ length: 50 }, (_, j) => makeSimDevice(`up-${String(i + j).padStart(3, '0')}`)))));
    for (const d of devices) {
      f.fleet.add(d);
      await storage.devices.add({
        id: d.id,
        userId: 'fleet',
        origin: 'jwks',
        signing: toPublicJwk(d.signing),
        encryption: toPublicJwk(d.encryption),
        state: 'provisioned',
      });
      await storage.devices.addTags(d.id, ['fleet']);
    }
    for (let i = 0; i < BOARDS; i += 50) await Promise.all(devices.slice(i, i + 50).map((d) => f.fleet.connectDevice(d, { intervalSeconds: 600 })));
  });

  after(async () => {
    await f?.close();
  });

  const call = async (method: string, path: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  };

  it('aborts within one rate step when rolled-back upgrades cross the abort rule', async () => {
    const storage = f.server.data.storage;
    const rollingBack = new Set(devices.filter((_, i) => i % 5 === 2).map((d) => d.id));
    expect(rollingBack.size).to.equal(40);
    for (const d of devices) d.rollBack = rollingBack.has(d.id);
    const rate = 600;
    const plan = await planRollout(storage, f.server.data.keys, {
      action: 'upgrade',
      params: { release: '0.2.0', arch: 'arm64', deadline_s: 120 },
      selector: { tag: 'fleet' },
      ratePerMin: rate,
      abortPercent: 10,
      abortMin: 20,
      concurrency: 64,
    });
    // The rollout keeps the request; each board gets the manifest of its arch's build when sealed.
    expect(plan.params).to.deep.equal({ release: '0.2.0', arch: 'arm64', deadline_s: 120 });
    expect(plan.sample.every((t) => t.problem === null)).to.equal(true);
    const r = await startRollout(storage, plan);
    f.server.rollouts?.kick();
    await eventually(async () => (await storage.rollouts.require(r.id)).state === 'aborted', 30_000, 'the rollout aborted');
    await eventually(async () => (await storage.rollouts.counts(r.id)).sent === 0, 15_000, 'the commands in flight answered');
    const commands = await storage.commands.list({ fanoutId: r.id, limit: 1000 });
    const acked = commands.filter((c) => c.ackedAt !== null).sort((a, b) => (a.ackedAt as number) - (b.ackedAt as number));
    let bad = 0;
    let results = 0;
    let trippedAt: number | undefined;
    for (const c of acked) {
      results++;
      if (c.ackStatus !== 'applied') bad++;
      if (results >= 20 && bad * 100 >= 10 * results) {
        trippedAt = c.ackedAt as number;
        break;
      }
    }
    expect(trippedAt).to.be.a('number');
    const after = commands.filter((c) => c.createdAt > (trippedAt as number)).length;
    const counts = await storage.rollouts.counts(r.id);
    process.stderr.write(
      `      abort at 10% after 20 results: ${commands.length} of ${BOARDS} sent, ${after} sealed after the rule held (one rate step = ${rate / 60}), ` +
        `${counts.rolled_back} rolled back, ${counts.cancelled} cancelled\n`,
    );
    expect(after).to.be.at.most(rate / 60);
    // Only rolled-back upgrades failed: the abort is theirs.
    expect(counts.failed + counts.rejected).to.equal(0);
    expect(counts.rolled_back).to.be.above(0);
    expect(counts.rolled_back).to.equal(commands.filter((c) => c.ackStatus === 'rolled_back').length);
    expect(counts.cancelled).to.equal(BOARDS - commands.length);
    expect(counts.cancelled).to.be.above(100);
    const rec = await storage.rollouts.require(r.id);
    expect(rec.stateReason).to.contain('rolled back');
    expect((rolloutView(rec, counts) as { counts?: Record<string, number> }).counts?.rolled_back ?? counts.rolled_back).to.equal(counts.rolled_back);
    // Every upgrade command carried the arm64 build's manifest; applied ones record the version and the arch.
    const release = JSON.parse((await runServerCli(['release', 'show', '0.2.0', '--json', '--data', f.dataDir])).stdout) as { sha256: string }[];
    expect(commands.every((c) => c.releaseSha256 === release[0]?.sha256)).to.equal(true);
    for (const c of commands) {
      const d = await storage.devices.require(c.deviceId);
      if (c.ackStatus === 'applied') expect([d.agentVersion, d.arch], c.deviceId).to.deep.equal(['0.2.0', 'arm64']);
      else expect(d.arch, c.deviceId).to.equal(null);
    }
    // Nothing more is sent once aborted.
    await sleep(1000);
    expect(await storage.commands.list({ fanoutId: r.id, limit: 1000 })).to.have.length(commands.length);
  });

  it('HTTP: lists releases, sends an upgrade by release (arch from the registry, or refused without one), shows versions and the upgrade phase', async () => {
    const list = await call('GET', '/releases');
    expect(list.status).to.equal(200);
    expect((list.json.releases as { version: string; arch: string }[]).map((x) => `${x.version}/${x.arch}`)).to.deep.equal(['0.2.0/arm64']);
    expect((await call('GET', '/releases/9.9.9')).status).to.equal(404);

    const storage = f.server.data.storage;
    // A second build of 0.2.0: a board whose arch the registry does not know can no longer be given the only one.
    const x64 = await makeTree(join(f.dir, 'tree-x64'), { version: '0.2.0', arch: 'x64', payload: 20_000 });
    await addReleaseFromTree(storage, f.dataDir, x64, { agentOnly: true, key: await loadReleaseKey(f.dataDir) });
    const fresh = (await findAsync(devices, async (d) => (await storage.devices.require(d.id)).arch === null && !d.rollBack)) as SimDevice;
    const known = (await findAsync(devices, async (d) => (await storage.devices.require(d.id)).arch === 'arm64')) as SimDevice;
    const unknownArch = await call('POST', `/devices/${fresh.id}/commands`, { action: 'upgrade', release: '0.2.0' });
    expect(unknownArch.status).to.equal(409);
    expect((unknownArch.json.error as { code: string }).code).to.equal('E_ARCH_UNKNOWN');
    const wrongAction = await call('POST', `/devices/${fresh.id}/commands`, { action: 'selftest', release: '0.2.0' });
    expect(wrongAction.status).to.equal(400);
    const noRelease = await call('POST', `/devices/${known.id}/commands`, { action: 'upgrade', release: '7.0.0' });
    expect(noRelease.status).to.equal(404);

    const one = await call('GET', '/releases/0.2.0?arch=x64');
    expect(one.status).to.equal(200);
    expect((one.json.builds as { manifest: { version: string; arch: string } }[]).map((b) => b.manifest.arch)).to.deep.equal(['x64']);
    expect(((await call('GET', '/releases/0.2.0')).json.builds as unknown[]).length).to.equal(2);
    const plan = await call('POST', '/rollouts', {
      action: 'upgrade',
      release: '0.2.0',
      arch: 'arm64',
      deadline_s: 90,
      selector: { tag: 'fleet' },
      dry_run: true,
    });
    expect(plan.status, JSON.stringify(plan.json)).to.equal(200);
    expect(plan.json.params).to.deep.equal({ release: '0.2.0', arch: 'arm64', deadline_s: 90 });
    const badPlan = await call('POST', '/rollouts', { action: 'upgrade', release: '8.0.0', selector: { tag: 'fleet' }, dry_run: true });
    expect(badPlan.status).to.equal(404);
    const sent = await call('POST', `/devices/${known.id}/commands`, { action: 'upgrade', release: '0.2.0', deadline_s: 60, allow_downgrade: true });
    expect(sent.status, JSON.stringify(sent.json)).to.equal(202);
    await eventually(async () => (await call('GET', `/commands/${String(sent.json.jti)}`)).json.status === 'applied', 10_000, 'the upgrade applied');
    const params = known.received.at(-1)?.claims.params as Record<string, unknown>;
    expect(Object.keys(params).sort()).to.deep.equal(['allow_downgrade', 'deadline_s', 'manifest']);

    // A board reports an upgrade under way: the phase shows in GET /devices/ID and device list.
    await f.fleet.report(fresh, 'interval', { intervalSeconds: 600, upgrade: { to: '0.2.0', phase: 'download', done: 3, total: 10 } });
    await eventually(async () => (await call('GET', `/devices/${fresh.id}`)).json.upgrade !== null, 5000, 'the phase recorded');
    const view = (await call('GET', `/devices/${fresh.id}`)).json;
    expect(view.upgrade).to.deep.equal({ to: '0.2.0', phase: 'download', done: 3, total: 10 });
    expect(view.version).to.equal('sim-1.0.0');
    const knownView = (await call('GET', `/devices/${known.id}`)).json;
    expect([knownView.version, knownView.arch]).to.deep.equal(['0.2.0', 'arm64']);
    const table = await runServerCli(['device', 'list', '--tag', 'fleet', '--data', f.dataDir]);
    expect(table.code, table.stderr).to.equal(0);
    expect(table.stdout).to.match(/VERSION\s+ARCH\s+UPGRADE/);
    expect(table.stdout.split('\n').find((l) => l.startsWith(fresh.id))).to.contain('0.2.0 download 3/10');
  });

  it('CLI: send DEVICE upgrade --release with --arch records nothing until applied; a dry-run rollout shows the request', async () => {
    const storage = f.server.data.storage;
    const fresh = (await findAsync(devices, async (d) => (await storage.devices.require(d.id)).arch === null && !d.rollBack)) as SimDevice;
    const refused = await runServerCli(['send', fresh.id, 'upgrade', '--release', '0.2.0', '--data', f.dataDir]);
    expect(refused.code).to.equal(2);
    expect(refused.stderr).to.contain('E_ARCH_UNKNOWN');
    const wrong = await runServerCli(['send', fresh.id, 'selftest', '--release', '0.2.0', '--data', f.dataDir]);
    expect(wrong.code).to.equal(2);
    const sent = await runServerCli([
      'send',
      fresh.id,
      'upgrade',
      '--release',
      '0.2.0',
      '--arch',
      'arm64',
      '--deadline',
      '2m',
      '--wait',
      '--timeout',
      '20s',
      '--data',
      f.dataDir,
    ]);
    expect(sent.code, sent.stderr).to.equal(0);
    expect(JSON.parse(sent.stdout)).to.deep.include({ status: 'applied', action: 'upgrade' });
    expect((await storage.devices.require(fresh.id)).arch).to.equal('arm64');
    const dry = await runServerCli(['send', '--tag', 'fleet', 'upgrade', '--release', '0.2.0', '--arch', 'arm64', '--dry-run', '--json', '--data', f.dataDir]);
    // The x64 board: its arch named, the x64 build's manifest (a rollout resolves each target the same way).
    const other = (await findAsync(devices, async (d) => (await storage.devices.require(d.id)).arch === null && !d.rollBack)) as SimDevice;
    const x = await runServerCli(['send', other.id, 'upgrade', '--release', '0.2.0', '--arch', 'x64', '--wait', '--timeout', '20s', '--data', f.dataDir]);
    expect(x.code, x.stderr).to.equal(0);
    expect((await storage.devices.require(other.id)).arch).to.equal('x64');
    expect(dry.code, dry.stderr).to.equal(0);
    expect((JSON.parse(dry.stdout) as { params: unknown }).params).to.deep.equal({ release: '0.2.0', arch: 'arm64' });
  });

  it('an upgrade in progress is never re-published at a reconnect, and a replay answer is not taken for its outcome', async () => {
    const storage = f.server.data.storage;
    const d = (await findAsync(devices, async (x) => (await storage.devices.require(x.id)).arch === 'arm64' && !x.rollBack)) as SimDevice;
    d.behaviour = 'silent';
    const before = d.received.length;
    const r = await startRollout(
      storage,
      await planRollout(storage, f.server.data.keys, { action: 'upgrade', params: { release: '0.2.0' }, selector: { devices: [d.id] }, ttlSeconds: 2 }),
    );
    f.server.rollouts?.kick();
    await eventually(() => d.received.length === before + 1, 10_000, 'the upgrade delivered');
    const jti = (await storage.rollouts.targets(r.id))[0]?.jti as string;
    // Past its lifetime, the board (the new agent in trial) reports in: nothing is re-published.
    await sleep(3500);
    await f.fleet.connectDevice(d, { intervalSeconds: 600 });
    await sleep(1500);
    expect(d.received.length).to.equal(before + 1);
    // A redelivered copy answered "already seen": not the outcome.
    const c = await storage.commands.get(jti);
    const ack = async (status: 'rejected' | 'applied', code: string): Promise<void> => {
      const { token } = await sealAck(
        {
          deviceId: d.id,
          serverId: f.server.data.keys.serverId,
          ref: jti,
          seq: c?.seq as number,
          status,
          code,
          ...(status === 'applied' ? { result: { version: '0.2.0', previous: '0.2.0' } } : {}),
        },
        { signer: d.signing, recipient: f.server.data.keys.trust.keys.find((k) => k.use === 'enc') as PublicJwk },
      );
      await f.fleet.publishRaw(`provision/${d.id}/ack`, token);
    };
    await ack('rejected', 'E_REPLAY');
    await sleep(800);
    expect((await storage.commands.get(jti))?.ackStatus).to.equal(null);
    await ack('applied', 'OK');
    await eventually(async () => (await storage.commands.get(jti))?.ackStatus === 'applied', 5000, 'the real outcome recorded');
    expect((await storage.devices.require(d.id)).flag).to.equal(null);
    await eventually(async () => (await storage.rollouts.require(r.id)).finishedAt !== null, 10_000, 'the rollout finished');
    expect((await storage.rollouts.counts(r.id)).applied).to.equal(1);
  });
});
