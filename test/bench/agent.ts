/**
 * Agent figures, each next to a bare `node` process measured the same way in
 * the same run: resident memory when idle (connected, subscribed, provisioned)
 * vs `node -e "setInterval(() => {}, 1e9)"`; time from process start to
 * subscribed (seen by mosquitto) vs time from process start to a bare node's
 * first output.
 */
import { spawn } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { KeyStore } from '../../agent/keystore.js';
import { toPublicJwk, type PrivateJwk } from '../../protocol/index.js';
import { makeDevice } from '../agent/agent-fixture.js';
import { rssOf, spawnAgent, TestSender } from '../helpers/agent-process.js';
import { makeParty } from '../helpers/keys.js';
import { startMosquittoProcess } from '../helpers/mosquitto-process.js';

export interface AgentFigures {
  runs: number;
  idle_rss_mb: number;
  bare_node_idle_rss_mb: number;
  rss_ratio: number;
  start_to_subscribed_ms: number;
  bare_node_start_ms: number;
  start_ratio: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};

async function bareNodeStartMs(): Promise<number> {
  const t0 = performance.now();
  const child = spawn(process.execPath, ['-e', 'process.stdout.write("up")'], { stdio: ['ignore', 'pipe', 'ignore'] });
  await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
  const ms = performance.now() - t0;
  await new Promise((r) => child.once('exit', r));
  return ms;
}

async function bareNodeIdleRss(settleMs: number): Promise<number> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e9)'], { stdio: 'ignore' });
  await sleep(settleMs);
  const rss = await rssOf(child.pid ?? -1);
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  return rss;
}

export async function benchAgent(options: { runs: number; settleMs: number }): Promise<AgentFigures> {
  const subscribedAt: { topic: string; at: number }[] = [];
  const broker = await startMosquittoProcess({
    persistence: false,
    onLog: (line) => {
      const m = / (\S+\/command)$/.exec(line);
      if (m?.[1]) subscribedAt.push({ topic: m[1], at: performance.now() });
    },
  });
  const server = await makeParty();
  const starts: number[] = [];
  const rss: number[] = [];
  const bareStarts: number[] = [];
  const bareRss: number[] = [];
  try {
    for (let run = 0; run < options.runs; run++) {
      const deviceId = `bench-agent-${run}`;
      const files = await makeDevice({ deviceId, brokerUrl: broker.url, server, keys: true, extra: { log_level: 'warn' } });
      const ks = await KeyStore.open(files.keystore);
      const sender = new TestSender(server, 'provision-server', 'provision', deviceId, {
        signing: toPublicJwk(ks.signingKey as PrivateJwk),
        encryption: toPublicJwk(ks.encryptionKey as PrivateJwk),
      });
      await sender.connect(broker.url);
      const topic = `provision/${deviceId}/command`;
      const t0 = performance.now();
      const agent = spawnAgent(files.configPath);
      while (!subscribedAt.some((s) => s.topic === topic)) {
        if (!agent.running()) throw new Error(`agent exited: ${agent.output()}`);
        await sleep(2);
      }
      starts.push((subscribedAt.find((s) => s.topic === topic)?.at ?? NaN) - t0);
      // Idle as in the field: provisioned, one update applied, then nothing.
      await sender.send('request');
      await sender.send('update', { sensor: { enabled: true, sample_interval_s: 60 } });
      await sleep(options.settleMs);
      rss.push(await agent.rss());
      agent.child.kill('SIGTERM');
      await agent.exited;
      await sender.close();
      await rm(files.dir, { recursive: true, force: true });
      bareStarts.push(await bareNodeStartMs());
      bareRss.push(await bareNodeIdleRss(options.settleMs));
    }
  } finally {
    await broker.close();
  }
  const mb = (b: number): number => Math.round((b / 1024 / 1024) * 10) / 10;
  const r = (x: number, d = 2): number => Math.round(x * 10 ** d) / 10 ** d;
  const idle = median(rss);
  const bareIdle = median(bareRss);
  const start = median(starts);
  const bareStart = median(bareStarts);
  return {
    runs: options.runs,
    idle_rss_mb: mb(idle),
    bare_node_idle_rss_mb: mb(bareIdle),
    rss_ratio: r(idle / bareIdle),
    start_to_subscribed_ms: r(start, 1),
    bare_node_start_ms: r(bareStart, 1),
    start_ratio: r(start / bareStart),
  };
}
