/**
 * Faults during a stream of sealed commands to a real `sensor-agent run`
 * process over mosquitto: the broker stopped and started several times, and
 * the agent killed with SIGKILL at random points (at least 20 times). Every
 * command must be applied exactly once, in order; the state file must always
 * parse. The counts are printed (sent, applied, duplicates refused, lost).
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'chai';
import { KeyStore } from '../../agent/store/keystore.js';
import { readState } from '../../agent/store/state.js';
import { toPublicJwk, type PrivateJwk } from '../../protocol/index.js';
import { makeDevice, type DeviceFiles } from '../agent/agent-fixture.js';
import { spawnAgent, TestSender, type AgentProcess } from '../helpers/agent-process.js';
import { makeParty, type Party } from '../helpers/keys.js';
import { mosquittoAvailable, startMosquittoProcess, type MosquittoProcess } from '../helpers/mosquitto-process.js';
import { checkAppliedOnceInOrder, runStream, type StreamCounts } from './stream-driver.js';
import { NO_MOSQUITTO, skipBecause } from '../helpers/skip.js';

const SERVER_ID = 'provision-server';
const PREFIX = 'provision';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Deterministic per run, different per test: a failure can be replayed with FAULT_SEED. */
const seed = Number(process.env.FAULT_SEED ?? Date.now() % 100_000);
function rng(s: number): () => number {
  let x = s || 1;
  return () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x / 2147483648;
  };
}

interface Rig {
  broker: MosquittoProcess;
  server: Party;
  files: DeviceFiles;
  sender: TestSender;
  agent: AgentProcess;
}

async function waitSubscribed(agent: AgentProcess, times: number, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((agent.output().match(/subscribed topic=/g) ?? []).length < times) {
    if (!agent.running()) throw new Error(`agent exited: ${agent.output().slice(-2000)}`);
    if (Date.now() > deadline) throw new Error(`agent not subscribed within ${timeoutMs} ms: ${agent.output().slice(-2000)}`);
    await sleep(20);
  }
}

async function setUp(deviceId: string): Promise<Rig> {
  const broker = await startMosquittoProcess({ persistence: true });
  const server = await makeParty();
  const files = await makeDevice({ deviceId, brokerUrl: broker.url, server, keys: true, extra: { log_level: 'info' } });
  const ks = await KeyStore.open(files.keystore);
  const sender = new TestSender(server, SERVER_ID, PREFIX, deviceId, {
    signing: toPublicJwk(ks.signingKey as PrivateJwk),
    encryption: toPublicJwk(ks.encryptionKey as PrivateJwk),
  });
  await sender.connect(broker.url, `fault-server-${deviceId}`);
  const agent = spawnAgent(files.configPath);
  await waitSubscribed(agent, 1);
  expect((await sender.send('request')).status).to.equal('applied');
  return { broker, server, files, sender, agent };
}

async function tearDown(rig: Rig | undefined): Promise<void> {
  if (!rig) return;
  if (rig.agent.running()) {
    rig.agent.child.kill('SIGTERM');
    await Promise.race([rig.agent.exited, sleep(5000)]);
    if (rig.agent.running()) rig.agent.child.kill('SIGKILL');
  }
  await rig.sender.close();
  await rig.broker.close();
  await rm(rig.files.dir, { recursive: true, force: true });
}

function report(what: string, c: StreamCounts, extra: string): void {
  process.stderr.write(
    `      ${what}: sent ${c.sent}, published ${c.published} (with re-publications), applied ${c.applied}, duplicates refused ${c.duplicatesRefused}, lost ${c.lost}; ${extra}\n`,
  );
}

describe('faults: a stream of sealed commands through broker restarts and agent kills', function () {
  this.timeout(180_000);

  before(function () {
    if (!mosquittoAvailable()) skipBecause(this, NO_MOSQUITTO);
  });

  describe('mosquitto stopped and started 4 times during the stream', () => {
    let rig: Rig | undefined;
    after(() => tearDown(rig));

    it('applies every command exactly once, in order', async () => {
      rig = await setUp('sensor-restart');
      const r = rig;
      const random = rng(seed);
      let restarts = 0;
      let chaosDone = false;
      const chaos = (async () => {
        for (; restarts < 4; restarts++) {
          await sleep(400 + random() * 1200);
          await r.broker.stop();
          await sleep(200 + random() * 800);
          await r.broker.start();
        }
        chaosDone = true;
      })();
      const result = await runStream(r.sender, { done: (n) => chaosDone && n >= 40, retryMs: 2500, giveUpMs: 60_000 });
      await chaos;
      expect(r.agent.running(), r.agent.output().slice(-2000)).to.equal(true);
      report(
        `broker restarts ${restarts} (seed ${seed})`,
        result.counts,
        `agent pid ${r.agent.pid} never restarted; ${r.sender.redeliveredAcks} acks delivered twice by the broker`,
      );
      expect(result.problems).to.deep.equal([]);
      expect(await checkAppliedOnceInOrder(r.files.stateDir, r.sender, result.sent)).to.deep.equal([]);
      expect(result.counts.lost).to.equal(0);
      expect(result.counts.applied).to.equal(result.counts.sent);
      expect(restarts).to.equal(4);
    });
  });

  describe('the agent killed with SIGKILL at random points, 20+ times', () => {
    let rig: Rig | undefined;
    after(() => tearDown(rig));

    it('after each restart every command is applied exactly once, and the state file always parses', async () => {
      rig = await setUp('sensor-kill');
      const r = rig;
      const random = rng(seed + 1);
      let kills = 0;
      let starts = 1;
      const parseFailures: string[] = [];
      let killerDone = false;
      const killer = (async () => {
        while (kills < 20) {
          await waitSubscribed(r.agent, 1);
          // Somewhere in the open/verify/hook/persist/ack work of the next commands.
          await sleep(random() * 250);
          r.agent.child.kill('SIGKILL');
          await r.agent.exited;
          kills++;
          try {
            JSON.parse(await readFile(join(r.files.stateDir, 'state.json'), 'utf8'));
            await readState(r.files.stateDir); // and it passes the agent's own checks
          } catch (err) {
            parseFailures.push(`after kill ${kills}: ${String(err)}`);
          }
          r.agent = spawnAgent(r.files.configPath);
          starts++;
        }
        killerDone = true;
      })();
      const result = await runStream(r.sender, { done: (n) => killerDone && n >= 40, retryMs: 1500, giveUpMs: 60_000 });
      await killer;
      await waitSubscribed(r.agent, 1);
      report(
        `agent SIGKILLs ${kills} (seed ${seed + 1})`,
        result.counts,
        `${starts} agent starts; ${r.sender.redeliveredAcks} acks delivered twice by the broker`,
      );
      expect(parseFailures, 'state.json must always parse').to.deep.equal([]);
      expect(result.problems).to.deep.equal([]);
      expect(await checkAppliedOnceInOrder(r.files.stateDir, r.sender, result.sent)).to.deep.equal([]);
      expect(result.counts.lost).to.equal(0);
      expect(result.counts.applied).to.equal(result.counts.sent);
      expect(kills).to.be.at.least(20);
    });
  });
});
