/**
 * Agent figures, each next to a bare `node` process measured the same way in
 * the same run: resident memory when idle (connected, subscribed, provisioned)
 * vs `node -e "setInterval(() => {}, 1e9)"`; time from process start to
 * subscribed (seen by mosquitto) vs time from process start to a bare node's
 * first output. The agent runs as the unit runs it: the same flags and environment
 * (AGENT_NODE_FLAGS, AGENT_NODE_ENV) and a V8 compile cache directory kept
 * between its starts (NODE_COMPILE_CACHE, Node >= 22.1): the first start fills
 * it (reported as start_first_ms), the later ones read it. Every run restarts the
 * same provisioned board (one state directory), as systemd restarts it: a start
 * after the first also finds the first will the previous run sealed ahead. With `tls` the broker is a TLS
 * mosquitto that requires client certificates (`mqtts://`, with ca, cert and key in the agent's
 * config, as on a flashed board): the agent then loads node:tls and does a TLS handshake.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KeyStore } from '../../agent/store/keystore.js';
import { toPublicJwk, type PrivateJwk } from '../../protocol/index.js';
import { makeDevice } from '../agent/agent-fixture.js';
import { hostSnapshot, rssOf, spawnAgent, TestSender } from '../helpers/agent-process.js';
import { SNAPSHOT_FILE, buildSnapshot } from '../../provisioning/builder/snapshot.js';
import { REPO } from '../../provisioning/builder/build-agent.js';
import { makeParty } from '../helpers/keys.js';
import { startMosquittoProcess } from '../helpers/mosquitto-process.js';
import { startTlsMosquitto } from '../server/mosquitto-tls.js';

export interface AgentFigures {
  runs: number;
  /** The Node.js version that ran the agent and the bare node. */
  node: string;
  /** Whether the agent started from a V8 startup snapshot made by that Node (as the unit does where the tree has one). */
  snapshot: boolean;
  /** The broker's scheme: `mqtt` (plain TCP) or `mqtts` (TLS with client certificates). */
  broker: 'mqtt' | 'mqtts';
  idle_rss_mb: number;
  bare_node_idle_rss_mb: number;
  rss_ratio: number;
  start_to_subscribed_ms: number;
  /** The first start, with the compile cache still empty (as at a board's first boot). */
  start_first_ms: number;
  bare_node_start_ms: number;
  start_ratio: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};

async function nodeVersion(node: string): Promise<string> {
  const child = spawn(node, ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString('utf8')));
  await new Promise((r) => child.once('exit', r));
  return out.trim();
}

async function bareNodeStartMs(node: string): Promise<number> {
  const t0 = performance.now();
  const child = spawn(node, ['-e', 'process.stdout.write("up")'], { stdio: ['ignore', 'pipe', 'ignore'] });
  await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
  const ms = performance.now() - t0;
  await new Promise((r) => child.once('exit', r));
  return ms;
}

async function bareNodeIdleRss(node: string, settleMs: number): Promise<number> {
  const child = spawn(node, ['-e', 'setInterval(() => {}, 1e9)'], { stdio: 'ignore' });
  await sleep(settleMs);
  const rss = await rssOf(child.pid ?? -1);
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  return rss;
}

/** The startup snapshot for `node`: the host tree's when it is this Node, else one made now by that Node (in `dir`). */
async function snapshotFor(node: string, dir: string): Promise<string | undefined> {
  if (node === process.execPath) return hostSnapshot();
  const version = (JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
  const r = await buildSnapshot(REPO, dir, version, { node }, join(dir, SNAPSHOT_FILE));
  if (!r.built) throw new Error(`no startup snapshot for ${node}: ${r.reason}`);
  return join(dir, SNAPSHOT_FILE);
}

export async function benchAgent(options: { runs: number; settleMs: number; node: string; tls?: boolean; snapshot?: boolean }): Promise<AgentFigures> {
  const subscribedAt: { topic: string; at: number }[] = [];
  const onLog = (line: string): void => {
    const m = / (\S+\/command)$/.exec(line);
    if (m?.[1]) subscribedAt.push({ topic: m[1], at: performance.now() });
  };
  const tls = options.tls ? await startTlsMosquitto({ onLog }) : undefined;
  const broker = tls ? { url: tls.url, close: () => tls.stop() } : await startMosquittoProcess({ persistence: false, onLog });
  const senderTls = tls ? await tls.clientCert('provision-server') : undefined;
  const senderCreds = senderTls && tls ? { ca: await readFile(tls.ca), cert: await readFile(senderTls.cert), key: await readFile(senderTls.key) } : undefined;
  const server = await makeParty();
  const compileCache = await mkdtemp(join(tmpdir(), 'bench-agent-cache-'));
  const snapshot = options.snapshot === false ? undefined : await snapshotFor(options.node, compileCache);
  const starts: number[] = [];
  const rss: number[] = [];
  const bareStarts: number[] = [];
  const bareRss: number[] = [];
  // One board, restarted as systemd restarts it: the same state directory (keys, sequence, the
  // next start's pre-sealed will) and the same compile cache every run.
  const deviceId = 'bench-agent';
  const cert = tls ? await tls.clientCert(deviceId) : undefined;
  const brokerConfig = tls && cert ? { broker: { url: tls.url, ca: tls.ca, cert: cert.cert, key: cert.key } } : {};
  const files = await makeDevice({ deviceId, brokerUrl: broker.url, server, keys: true, extra: { log_level: 'warn', ...brokerConfig } });
  const ks = await KeyStore.open(files.keystore);
  const sender = new TestSender(server, 'provision-server', 'provision', deviceId, {
    signing: toPublicJwk(ks.signingKey as PrivateJwk),
    encryption: toPublicJwk(ks.encryptionKey as PrivateJwk),
  });
  const topic = `provision/${deviceId}/command`;
  try {
    await sender.connect(broker.url, undefined, senderCreds);
    for (let run = 0; run < options.runs; run++) {
      const t0 = performance.now();
      const agent = spawnAgent(files.configPath, { NODE_COMPILE_CACHE: compileCache }, options.node, { snapshot: snapshot ?? false });
      const subscribed = (): { at: number } | undefined => subscribedAt.find((s) => s.topic === topic && s.at >= t0);
      while (!subscribed()) {
        if (!agent.running()) throw new Error(`agent exited: ${agent.output()}`);
        await sleep(2);
      }
      starts.push((subscribed()?.at ?? NaN) - t0);
      // Idle as in the field: provisioned, an update applied, then nothing.
      if (run === 0) await sender.send('request');
      await sender.send('update', { sensor: { enabled: true, sample_interval_s: 60 + run } });
      await sleep(options.settleMs);
      rss.push(await agent.rss());
      agent.child.kill('SIGTERM');
      await agent.exited;
      bareStarts.push(await bareNodeStartMs(options.node));
      bareRss.push(await bareNodeIdleRss(options.node, options.settleMs));
    }
  } finally {
    await sender.close().catch(() => undefined);
    await broker.close();
    await rm(files.dir, { recursive: true, force: true });
    await rm(compileCache, { recursive: true, force: true });
  }
  const mb = (b: number): number => Math.round((b / 1024 / 1024) * 10) / 10;
  const r = (x: number, d = 2): number => Math.round(x * 10 ** d) / 10 ** d;
  const idle = median(rss);
  const bareIdle = median(bareRss);
  const start = median(starts);
  const bareStart = median(bareStarts);
  return {
    runs: options.runs,
    node: await nodeVersion(options.node),
    snapshot: snapshot !== undefined,
    broker: tls ? 'mqtts' : 'mqtt',
    idle_rss_mb: mb(idle),
    bare_node_idle_rss_mb: mb(bareIdle),
    rss_ratio: r(idle / bareIdle),
    start_to_subscribed_ms: r(start, 1),
    start_first_ms: r(starts[0] ?? NaN, 1),
    bare_node_start_ms: r(bareStart, 1),
    start_ratio: r(start / bareStart),
  };
}
