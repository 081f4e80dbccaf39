/**
 * The hostile corpus through a real broker (mosquitto) to a running
 * `sensor-agent run` process. Afterwards: the agent still runs and applies a
 * valid command; `sensor-agent status --json` is unchanged; no ack for any
 * message that failed authentication (and a `rejected` ack with an expected
 * code for each authenticated one); resident memory grew by less than a few MB.
 */
import { rm } from 'node:fs/promises';
import { expect } from 'chai';
import { KeyStore } from '../../agent/store/keystore.js';
import { toPublicJwk, type PrivateJwk } from '../../protocol/index.js';
import { makeDevice, type DeviceFiles } from '../agent/agent-fixture.js';
import { agentStatus, spawnAgent, TestSender, type AgentProcess } from '../helpers/agent-process.js';
import { buildHostileCorpus, type HostileCase } from '../helpers/corpus.js';
import { makeParty, type Party } from '../helpers/keys.js';
import { mosquittoAvailable, startMosquittoProcess, type MosquittoProcess } from '../helpers/mosquitto-process.js';
import { NO_MOSQUITTO, skipBecause } from '../helpers/skip.js';

const DEVICE = 'sensor-adv';
const SERVER_ID = 'provision-server';
const PREFIX = 'provision';
const MB = 1024 * 1024;

describe('adversarial: the hostile corpus through mosquitto to a running agent', function () {
  this.timeout(240_000);
  let broker: MosquittoProcess;
  let server: Party;
  let files: DeviceFiles;
  let agent: AgentProcess;
  let sender: TestSender;
  let deviceSigning: PrivateJwk;
  const subscribed: string[] = [];

  before(async function () {
    if (!mosquittoAvailable()) skipBecause(this, NO_MOSQUITTO);
    broker = await startMosquittoProcess({ persistence: false, onLog: (l) => subscribed.push(l) });
    server = await makeParty();
    files = await makeDevice({ deviceId: DEVICE, brokerUrl: broker.url, server, keys: true, extra: { log_level: 'info', clock: { policy: 'trusted' } } });
    const ks = await KeyStore.open(files.keystore);
    deviceSigning = ks.signingKey as PrivateJwk;
    const encryption = ks.encryptionKey as PrivateJwk;
    sender = new TestSender(server, SERVER_ID, PREFIX, DEVICE, { signing: toPublicJwk(deviceSigning), encryption: toPublicJwk(encryption) });
    await sender.connect(broker.url);
    agent = spawnAgent(files.configPath);
    const deadline = Date.now() + 20_000;
    while (!subscribed.some((l) => l.includes(`${PREFIX}/${DEVICE}/command`))) {
      if (!agent.running()) throw new Error(`agent exited: ${agent.output()}`);
      if (Date.now() > deadline) throw new Error(`agent did not subscribe: ${agent.output()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  after(async () => {
    if (agent?.running()) {
      agent.child.kill('SIGTERM');
      await agent.exited;
    }
    await sender?.close();
    await broker?.close();
    if (files) await rm(files.dir, { recursive: true, force: true });
  });

  it('survives 500+ hostile messages (twice) with no state change, no unauthenticated ack, bounded memory, and still applies a valid command', async () => {
    // Provision it and apply one update, so there is a last seq and a seen jti to attack.
    expect((await sender.send('request')).status, agent.output()).to.equal('applied');
    const upd = await sender.seal('update', { sensor: { enabled: true, sample_interval_s: 30 } });
    await sender.publish(upd.token);
    expect((await sender.waitAck((a) => a.ref === upd.jti)).status).to.equal('applied');

    const corpus = await buildHostileCorpus({
      serverId: SERVER_ID,
      deviceId: DEVICE,
      otherDeviceId: 'sensor-other',
      serverSigning: server.signing,
      deviceSigning,
      deviceEncryption: sender.device.encryption,
      lastSeq: upd.seq,
      seenJti: upd.jti,
    });
    expect(corpus.length).to.be.at.least(500);
    const last = corpus[corpus.length - 1] as HostileCase;
    expect(last.acked).to.equal(true);

    // Passes 2 and 3 leave out the two 10 MB messages: buffering them moves RSS by tens of MB at the
    // allocator's whim, which would hide (or fake) a per-message leak.
    const steady = corpus.filter((c) => c.payload.length < 1024 * 1024);
    const before = await agentStatus(files.configPath);
    const rss0 = await agent.rss();
    const passes: { rss: number; acks: number }[] = [];
    const problems: string[] = [];
    for (let pass = 1; pass <= 3; pass++) {
      const from = sender.acks.length;
      const cases = pass === 1 ? corpus : steady;
      // Packets over the agent's 129 KiB packet cap (the two 10 MB messages) make it drop the connection
      // unread and reconnect; sent at QoS 1 they would be redelivered at every reconnect (the production
      // broker's max_packet_size keeps them out), so they go at QoS 0.
      for (const c of cases) await sender.publish(c.payload, c.topicDeviceId ?? DEVICE, c.payload.length > 129 * 1024 ? 0 : 1);
      // In-order delivery and processing: the last case's ack means every case was handled.
      await sender.waitAck(
        (a) => a.ref === last.jti && sender.acks.length - from >= 1 && sender.acks.slice(from).some((x) => x.claims.ref === last.jti),
        120_000,
      );
      await new Promise((r) => setTimeout(r, 300)); // any stray ack would have arrived
      expect(agent.running(), `agent died in pass ${pass}: ${agent.output().slice(-3000)}`).to.equal(true);
      const acks = sender.acks.slice(from).map((a) => a.claims);
      problems.push(...checkAcks(cases, acks, upd.jti).map((p) => `pass ${pass}: ${p}`));
      passes.push({ rss: await agent.rss(), acks: acks.length });
    }

    const after = await agentStatus(files.configPath);
    // Authenticated refusals are saved (a refused command is final), so the state file was rewritten
    // (updated_at); nothing the status shows besides that may change.
    expect({ ...after, updated_at: null }, 'status --json after the corpus').to.deep.equal({ ...before, updated_at: null });

    const mb = (i: number): number => (passes[i]?.rss ?? 0) / MB;
    const growth1 = mb(0) - rss0 / MB;
    const growth2 = mb(1) - mb(0);
    const growth3 = mb(2) - mb(1);
    process.stderr.write(
      `      corpus: ${corpus.length} messages, then ${steady.length} (without the 10 MB ones) twice; ${passes[0]?.acks} rejected acks per pass; RSS ${(rss0 / MB).toFixed(1)} MB -> ${mb(0).toFixed(1)} (pass 1, ${growth1.toFixed(1)} MB) -> ${mb(1).toFixed(1)} (pass 2, ${growth2.toFixed(1)} MB) -> ${mb(2).toFixed(1)} MB (pass 3, ${growth3.toFixed(1)} MB)\n`,
    );
    // Pass 1 is also the warm-up: V8 sizes its heap and compiles (about 25 MB on this corpus without
    // the 10 MB messages, which are refused from their packet header, unread). Passes 2 and 3 send the rest
    // again: what accumulates per message shows in both; heap resizing and allocator noise shows in
    // one at most.
    expect(Math.min(growth2, growth3), 'RSS growth per pass after the warm-up (MB, smaller of passes 2 and 3)').to.be.below(4);
    expect(growth1, 'RSS growth over the first (warm-up) pass (MB)').to.be.below(64);

    // Still alive and still applying: a valid command after all that.
    const next = await sender.seal('update', { sensor: { sample_interval_s: 45 } }, { seq: upd.seq + 1 });
    await sender.publish(next.token);
    const ack = await sender.waitAck((a) => a.ref === next.jti);
    expect(ack.status, `${ack.code} ${ack.detail}`).to.equal('applied');
    const final = await agentStatus(files.configPath);
    expect(final.last_seq).to.equal(upd.seq + 1);

    // Checked last, so that a failure here still shows the figures above.
    expect(problems, 'acks').to.deep.equal([]);
    expect(sender.badAcks, 'acks from the agent that the server cannot open').to.deep.equal([]);
  });

  function checkAcks(
    corpus: readonly HostileCase[],
    acks: readonly { ref: string; status: string; code: string; detail: string }[],
    seenJti: string,
  ): string[] {
    const byJti = new Map<string, HostileCase[]>();
    for (const c of corpus) if (c.jti) byJti.set(c.jti, [...(byJti.get(c.jti) ?? []), c]);
    const problems: string[] = [];
    const count = new Map<string, number>();
    for (const a of acks) {
      count.set(a.ref, (count.get(a.ref) ?? 0) + 1);
      const cases = byJti.get(a.ref) ?? [];
      if (cases.length === 0) {
        problems.push(`ack for unknown ref ${a.ref} (${a.status} ${a.code})`);
        continue;
      }
      const ackable = cases.filter((c) => c.acked && !c.topicDeviceId);
      if (ackable.length === 0) {
        problems.push(`ack for an unauthenticated message: ${cases.map((c) => c.name).join(', ')} (${a.status} ${a.code})`);
        continue;
      }
      if (a.ref === seenJti && a.status === 'applied' && a.detail.startsWith('duplicate')) continue; // a replay of an applied command is re-acked as such
      if (a.status !== 'rejected' || !ackable.some((c) => c.codes.includes(a.code as never))) {
        problems.push(`${ackable.map((c) => c.name).join(', ')}: ack ${a.status} ${a.code}, expected rejected with ${ackable[0]?.codes.join('|')}`);
      }
    }
    for (const c of corpus) {
      if (!c.acked || c.topicDeviceId || !c.jti) continue;
      const n = count.get(c.jti) ?? 0;
      const expected = corpus.filter((x) => x.jti === c.jti && x.acked && !x.topicDeviceId).length;
      if (n !== expected) problems.push(`${c.name}: ${n} acks, expected ${expected}`);
    }
    return [...new Set(problems)];
  }
});
