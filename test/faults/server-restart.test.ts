/**
 * `send` killed (SIGKILL) in the middle of the rollout it drives, then `rollout
 * resume`: devices that already acknowledged get nothing new, commands
 * sealed but unanswered are re-published as they were sealed (same jti and
 * seq), only devices never reached get a newly sealed command, and every
 * device applies exactly once.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { toPublicJwk, type JwkSet } from '../../protocol/index.js';
import { initDataDir } from '../../server/data-dir.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { mosquittoAvailable, startMosquittoProcess, type MosquittoProcess } from '../helpers/mosquitto-process.js';
import { runServerCli, SERVER_CLI } from '../server/run-cli.js';
import { SimFleet, makeSimDevice, type SimDevice } from '../server/sim-fleet.js';
import { NO_MOSQUITTO, skipBecause } from '../helpers/skip.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('faults: send killed while it drives a rollout, then rollout resume', function () {
  this.timeout(120_000);
  let broker: MosquittoProcess | undefined;
  let dir: string | undefined;
  let fleet: SimFleet | undefined;

  before(function () {
    if (!mosquittoAvailable()) skipBecause(this, NO_MOSQUITTO);
  });
  after(async () => {
    await fleet?.close().catch(() => undefined);
    await broker?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('resumes without re-sealing what was acknowledged; each device applies exactly once', async () => {
    broker = await startMosquittoProcess({ persistence: true });
    dir = await mkdtemp(join(tmpdir(), 'faults-fanout-'));
    const data = join(dir, 'data');
    await initDataDir(data, { broker: { url: broker.url } });
    const trust = JSON.parse(await readFile(join(data, 'keys', 'trust.jwks'), 'utf8')) as JwkSet;
    fleet = await SimFleet.connect(broker.url, { trust });
    const storage = openSqliteStorage(join(data, 'registry.sqlite'));
    const devices: SimDevice[] = [];
    try {
      for (let i = 0; i < 40; i++) {
        // The first 20 answer at once; the other 20 stay silent until after the crash.
        const d = fleet.add(await makeSimDevice(`fan-${String(i).padStart(2, '0')}`, i < 20 ? 'apply' : 'silent'));
        await storage.devices.add({ id: d.id, userId: 'fan', origin: 'jwks', signing: toPublicJwk(d.signing), encryption: toPublicJwk(d.encryption) });
        devices.push(d);
      }
      const send = spawn(
        process.execPath,
        [SERVER_CLI, 'send', '--user', 'fan', 'update', '--params', '{"sensor":{"enabled":true}}', '--data', data, '--timeout', '60s', '--concurrency', '8'],
        {
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      let out = '';
      send.stdout.on('data', (b: Buffer) => (out += b.toString()));
      send.stderr.on('data', (b: Buffer) => (out += b.toString()));
      const exited = new Promise((r) => send.once('exit', r));

      // Wait until the 20 answering devices are acknowledged and 8 commands wait on silent ones.
      const fanoutId = (): string | undefined => (storage.db.prepare('SELECT id FROM rollouts').get() as { id: string } | undefined)?.id;
      const deadline = Date.now() + 30_000;
      for (;;) {
        const id = fanoutId();
        const cmds = id ? await storage.commands.list({ fanoutId: id, limit: 1000 }) : [];
        if (cmds.filter((c) => c.ackStatus === 'applied').length >= 20 && cmds.filter((c) => c.ackStatus === null && c.sentAt !== null).length >= 8) break;
        if (send.exitCode !== null) throw new Error(`send exited early: ${out}`);
        if (Date.now() > deadline) throw new Error(`fan-out did not progress: ${out}`);
        await sleep(50);
      }
      send.kill('SIGKILL');
      await exited;
      const id = fanoutId() as string;
      const beforeResume = await storage.commands.list({ fanoutId: id, limit: 1000 });
      const ackedBefore = new Map(beforeResume.filter((c) => c.ackStatus !== null).map((c) => [c.deviceId, c.jti]));
      const pendingBefore = new Map(beforeResume.filter((c) => c.ackStatus === null).map((c) => [c.deviceId, c.jti]));
      expect(ackedBefore.size).to.equal(20);
      expect(pendingBefore.size).to.be.at.least(8);

      for (const d of devices) d.behaviour = 'apply';
      // The killed send's lease lapses (10 s) before the resume's engine takes over.
      const resumed = await runServerCli(['rollout', 'resume', id, '--data', data, '--timeout', '20s'], { timeoutMs: 60_000 });
      expect(resumed.code, resumed.stdout + resumed.stderr).to.equal(0);
      expect(resumed.stdout).to.match(/applied\s+40\n/);

      const afterResume = await storage.commands.list({ fanoutId: id, limit: 1000 });
      const perDevice = new Map<string, string[]>();
      for (const c of afterResume) perDevice.set(c.deviceId, [...(perDevice.get(c.deviceId) ?? []), c.jti]);
      let resealed = 0;
      let republished = 0;
      let sealedAfter = 0;
      for (const d of devices) {
        const jtis = perDevice.get(d.id) ?? [];
        expect(jtis, `${d.id}: one sealed command for the whole fan-out`).to.have.length(1);
        if (ackedBefore.has(d.id)) {
          if (jtis[0] !== ackedBefore.get(d.id)) resealed++;
        } else if (pendingBefore.has(d.id)) {
          expect(jtis[0], `${d.id}: re-published as sealed`).to.equal(pendingBefore.get(d.id));
          republished++;
        } else {
          sealedAfter++;
        }
        expect(
          d.applied.map((c) => c.jti),
          `${d.id} applied exactly once`,
        ).to.deep.equal(jtis);
      }
      const applied = devices.filter((d) => d.applied.length === 1).length;
      process.stderr.write(
        `      rollout ${devices.length} devices: acked before the kill ${ackedBefore.size}, re-sealed ${resealed}, pending re-published unchanged ${republished}, sealed after resume ${sealedAfter}; applied ${applied}, lost ${devices.length - applied}\n`,
      );
      expect(resealed).to.equal(0);
      expect(applied).to.equal(devices.length);
    } finally {
      await storage.close();
    }
  });
});
