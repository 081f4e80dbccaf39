/**
 * A full disk under a running agent: its state directory on a small tmpfs,
 * filled before a command arrives. The command must not be applied or
 * acknowledged (to the broker or the server), the agent says why (E_DISK_FULL)
 * and keeps running with its old state; once space is freed, the broker's
 * redelivery applies it exactly once.
 */
import { execFile } from 'node:child_process';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { KeyStore } from '../../agent/store/keystore.js';
import { toPublicJwk, type PrivateJwk } from '../../protocol/index.js';
import { makeDevice, type DeviceFiles } from '../agent/agent-fixture.js';
import { spawnAgent, TestSender, type AgentProcess } from '../helpers/agent-process.js';
import { makeParty } from '../helpers/keys.js';
import { mosquittoAvailable, startMosquittoProcess, type MosquittoProcess } from '../helpers/mosquitto-process.js';
import { NO_MOSQUITTO, NO_TMPFS, skipBecause } from '../helpers/skip.js';

const run = promisify(execFile);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const DEVICE = 'sensor-diskfull';

describe('faults: the disk fills up under a running agent, or is full at its start', function () {
  this.timeout(90_000);
  let broker: MosquittoProcess | undefined;
  let files: DeviceFiles | undefined;
  let agent: AgentProcess | undefined;
  let sender: TestSender | undefined;
  let mnt: string | undefined;
  let mounted = false;

  before(async function () {
    if (!mosquittoAvailable()) skipBecause(this, NO_MOSQUITTO);
    broker = await startMosquittoProcess({ persistence: true });
    const server = await makeParty();
    files = await makeDevice({ deviceId: DEVICE, brokerUrl: broker.url, server, keys: true, extra: { log_level: 'info' } });
    mnt = join(files.dir, 'small-disk');
    await mkdir(mnt);
    try {
      await run('mount', ['-t', 'tmpfs', '-o', 'size=128k,mode=0700', 'tmpfs', mnt]);
      mounted = true;
    } catch (err) {
      if (process.env.REQUIRE_TMPFS === '1') throw err;
      skipBecause(this, NO_TMPFS);
    }
    const config = JSON.parse(await readFile(files.configPath, 'utf8')) as Record<string, unknown>;
    await writeFile(files.configPath, JSON.stringify({ ...config, state_dir: join(mnt, 'state') }, null, 2));
    const ks = await KeyStore.open(files.keystore);
    sender = new TestSender(server, 'provision-server', 'provision', DEVICE, {
      signing: toPublicJwk(ks.signingKey as PrivateJwk),
      encryption: toPublicJwk(ks.encryptionKey as PrivateJwk),
    });
    await sender.connect(broker.url);
    agent = spawnAgent(files.configPath);
    const deadline = Date.now() + 20_000;
    while (!/subscribed topic=/.test(agent.output())) {
      if (!agent.running() || Date.now() > deadline) throw new Error(`agent did not subscribe: ${agent.output().slice(-2000)}`);
      await sleep(20);
    }
  });

  after(async () => {
    if (agent?.running()) {
      agent.child.kill('SIGTERM');
      await Promise.race([agent.exited, sleep(5000)]);
    }
    await sender?.close();
    await broker?.close();
    if (mounted && mnt) await run('umount', [mnt]).catch(() => undefined);
    if (files) await rm(files.dir, { recursive: true, force: true });
  });

  it('refuses to apply without persisting, says E_DISK_FULL, keeps running; applies exactly once when space returns', async () => {
    const s = sender as TestSender;
    const a = agent as AgentProcess;
    const disk = mnt as string;
    const stateFile = join(disk, 'state', 'state.json');
    expect((await s.send('request', {}, 20_000)).status, a.output()).to.equal('applied');
    const before = await readFile(stateFile, 'utf8');

    for (let i = 0; ; i++) {
      try {
        await writeFile(join(disk, `filler-${i}`), Buffer.alloc(4096, 0x78));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
        throw err;
      }
    }
    const cmd = await s.seal('update', { sensor: { enabled: true, name: 'after the disk filled up' } });
    await s.publish(cmd.token);
    const deadline = Date.now() + 15_000;
    while (!/E_DISK_FULL|disk is full/.test(a.output())) {
      if (Date.now() > deadline) throw new Error(`no disk-full error reported: ${a.output().slice(-3000)}`);
      await sleep(100);
    }
    await sleep(3000); // past the first reconnect (backoff from 1 s), which is when redelivery is asked for
    expect(a.running(), `the agent keeps running; its output:\n${a.output().slice(-2500)}`).to.equal(true);
    expect(
      s.acks.some((x) => x.claims.ref === cmd.jti),
      'no ack for a command that was not persisted',
    ).to.equal(false);
    expect(await readFile(stateFile, 'utf8'), 'state.json keeps its old contents').to.equal(before);
    expect(
      (await readdir(join(disk, 'state'))).filter((f) => f.includes('.tmp-')),
      'no temp file left',
    ).to.deep.equal([]);

    for (const f of await readdir(disk)) if (f.startsWith('filler-')) await rm(join(disk, f));
    // Redelivered by the broker once the agent has reconnected (it drops the connection to get it back).
    const ack = await s
      .waitAck((x) => x.ref === cmd.jti, 70_000)
      .catch((err: unknown) => {
        throw new Error(`${String(err)}; agent output:\n${a.output().slice(-4000)}`);
      });
    expect(ack.status, `${ack.code} ${ack.detail}`).to.equal('applied');
    const state = JSON.parse(await readFile(stateFile, 'utf8')) as { recent: { jti: string }[]; settings: { sensor?: { name?: string } } };
    expect(state.recent.filter((r) => r.jti === cmd.jti)).to.have.length(1);
    expect(state.settings.sensor?.name).to.equal('after the disk filled up');
    expect(s.acks.filter((x) => x.claims.ref === cmd.jti && !x.claims.detail.startsWith('duplicate'))).to.have.length(1);
  });

  it('started on a full disk (its run cannot be saved): connects without a will, reports nothing, and survives broker restarts', async () => {
    const b = broker as MosquittoProcess;
    const disk = mnt as string;
    const first = agent as AgentProcess;
    first.child.kill('SIGTERM');
    await first.exited;
    // The will sealed ahead would be taken and removed at the start, freeing room for the save: gone first.
    await rm(join(disk, 'state', 'next-will.json'), { force: true });
    for (let i = 0; ; i++) {
      try {
        await writeFile(join(disk, `filler2-${i}`), Buffer.alloc(1024, 0x78));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
        throw err;
      }
    }
    const a = spawnAgent((files as DeviceFiles).configPath);
    agent = a;
    let deadline = Date.now() + 20_000;
    while (!/subscribed topic=/.test(a.output())) {
      if (!a.running() || Date.now() > deadline) throw new Error(`agent did not subscribe: ${a.output().slice(-2000)}`);
      await sleep(20);
    }
    // Two broker restarts: each reconnect seals a will whose run cannot be saved.
    for (let i = 0; i < 2; i++) {
      await b.stop();
      await sleep(500);
      await b.start();
      const seen = (a.output().match(/subscribed topic=/g) ?? []).length;
      deadline = Date.now() + 20_000;
      while ((a.output().match(/subscribed topic=/g) ?? []).length <= seen) {
        if (!a.running() || Date.now() > deadline) throw new Error(`agent did not come back after broker restart ${i + 1}: ${a.output().slice(-3000)}`);
        await sleep(50);
      }
    }
    await sleep(500);
    expect(a.running(), `the agent keeps running; its output:\n${a.output().slice(-2500)}`).to.equal(true);
    expect(a.output()).to.match(/last will not sealed; connecting without one/);
    for (const f of await readdir(disk)) if (f.startsWith('filler2-')) await rm(join(disk, f));
  });
});
