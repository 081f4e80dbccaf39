/**
 * `npm run demo`: the whole system in one process tree on a machine with no
 * broker installed. An embedded broker (aedes, loopback), a server with fresh
 * keys in a temporary directory, and real `sensor-agent` processes with the fake
 * GPIO; each enrolls with its one-time token, then request (automatic on
 * enrollment), update, rotate and delete run in turn. A spy subscribed to `#`
 * records what the broker saw, and the demo checks that no plaintext claim
 * crossed it. Exits 0 on success, 1 on any failure; cleans up either way.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt, { type MqttClient } from 'mqtt';
import type { Action } from '../protocol/index.js';
import { writeBundle } from '../server/provisioning/device-bundle.js';
import { initDataDir } from '../server/data-dir.js';
import { startEmbeddedBroker, type EmbeddedBroker } from './embedded-broker.js';
import { silentLogger } from '../lib/log.js';
import { startProvisionServer, type RunningServer } from '../server/service.js';

// The agent as the boards run it: the one-file bundle `npm run build` writes into build/host.
const AGENT_CLI = fileURLToPath(new URL('../../build/host/sensor-agent.mjs', import.meta.url));
const STEP_TIMEOUT_MS = 20_000;

interface DemoAgent {
  deviceId: string;
  userId: string;
  token: string;
  dir: string;
  child: ChildProcess;
  exited: Promise<number | null>;
  logPath: string;
}

interface TimelineRow {
  at: number;
  device: string;
  step: string;
  seq: string;
  status: string;
  code: string;
  latencyMs: number;
  note: string;
}

interface Seen {
  topic: string;
  payload: Buffer;
}

class DemoFailure extends Error {}

const started = Date.now();
const agentsWanted = Math.max(1, Math.min(Number(process.env.DEMO_AGENTS ?? '2') || 2, 20));
const out = (line = ''): void => void process.stdout.write(`${line}\n`);

async function main(): Promise<void> {
  const cleanup: (() => Promise<void>)[] = [];
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\ndemo: ${signal}: cleaning up\n`);
    void runCleanup(cleanup).then(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await run(cleanup);
    await runCleanup(cleanup);
  } catch (err) {
    await runCleanup(cleanup);
    if (interrupted) return; // the signal handler reports and exits 130
    process.stderr.write(`\ndemo: FAILED: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  }
}

async function runCleanup(cleanup: (() => Promise<void>)[]): Promise<void> {
  while (cleanup.length) {
    const fn = cleanup.pop();
    const t = Date.now();
    await fn?.().catch(() => undefined);
    if (process.env.DEMO_DEBUG) process.stderr.write(`cleanup step ${cleanup.length}: ${Date.now() - t} ms\n`);
  }
}

async function run(cleanup: (() => Promise<void>)[]): Promise<void> {
  const tmp = await mkdtemp(join(tmpdir(), 'sealed-provisioning-demo-'));
  cleanup.push(() => rm(tmp, { recursive: true, force: true }));

  const broker: EmbeddedBroker = await startEmbeddedBroker();
  cleanup.push(() => broker.close());

  const seen: Seen[] = [];
  const spy: MqttClient = await mqtt.connectAsync(broker.url, { clientId: 'demo-spy', reconnectPeriod: 0 });
  cleanup.push(() => spy.endAsync(true));
  spy.on('message', (topic, payload) => seen.push({ topic, payload: Buffer.from(payload) }));
  await spy.subscribeAsync('#', { qos: 1 });

  const dataDir = join(tmp, 'server');
  await initDataDir(dataDir, { broker: { url: broker.url } });
  const server: RunningServer = await startProvisionServer({ dataDir, shared: 'off', clientId: 'demo-server', log: silentLogger });
  cleanup.push(() => server.close());
  const storage = server.data.storage;

  out('sealed-provisioning demo');
  out(`  broker  aedes in process at ${broker.url} (a spy is subscribed to '#')`);
  out(`  server  ${server.data.keys.serverId}, fresh keys in ${dataDir}`);
  out(`  agents  ${agentsWanted} x sensor-agent (real processes, fake GPIO)`);
  out();

  const timeline: TimelineRow[] = [];
  const secrets = new Set<string>();
  const agents: DemoAgent[] = [];
  for (let i = 1; i <= agentsWanted; i++) {
    const deviceId = `demo-sensor-${String(i).padStart(2, '0')}`;
    const userId = `demo-user-${i}@example.org`;
    const dir = join(tmp, 'boards', deviceId);
    // aedes speaks MQTT 3.1.1 only (bundles default to MQTT 5).
    await writeBundle(server.data, { deviceId, userId, outDir: dir, broker: { url: broker.url }, gpioBackend: 'fake', tokenTtlMs: 3600_000, mqttVersion: 4 });
    const token = (await readFile(join(dir, 'enroll.token'), 'utf8')).trim();
    for (const s of [deviceId, userId, token]) secrets.add(s);
    const logPath = join(tmp, `${deviceId}.log`);
    const log = createWriteStream(logPath);
    const child = spawn(process.execPath, [AGENT_CLI, 'run', '--config', join(dir, 'config.json')], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout?.pipe(log);
    child.stderr?.pipe(log);
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    agents.push({ deviceId, userId, token, dir, child, exited, logPath });
    cleanup.push(async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(t);
      }
    });
  }

  const fail = async (agent: DemoAgent, why: string): Promise<never> => {
    const tail = (await readFile(agent.logPath, 'utf8').catch(() => '')).split('\n').slice(-15).join('\n');
    throw new DemoFailure(`${agent.deviceId}: ${why}\n--- agent log (last lines) ---\n${tail}`);
  };

  // 1. Enrollment and the automatic `request`.
  const spawnedAt = Date.now();
  await Promise.all(
    agents.map(async (agent) => {
      const deadline = Date.now() + STEP_TIMEOUT_MS;
      for (;;) {
        const d = await storage.devices.get(agent.deviceId);
        if (d?.state === 'provisioned') break;
        if (agent.child.exitCode !== null) await fail(agent, `agent exited with ${agent.child.exitCode} before it was provisioned`);
        if (Date.now() > deadline) await fail(agent, `not provisioned within ${STEP_TIMEOUT_MS} ms (state: ${d?.state ?? 'not enrolled'})`);
        await sleep(50);
      }
      const d = await storage.devices.require(agent.deviceId);
      const request = (await storage.commands.list({ deviceId: agent.deviceId })).find((c) => c.action === 'request');
      timeline.push({
        at: d.enrolledAt ?? Date.now(),
        device: agent.deviceId,
        step: 'enroll',
        seq: '-',
        status: 'accepted',
        code: 'TOKEN OK',
        latencyMs: (d.enrolledAt ?? Date.now()) - spawnedAt,
        note: `self-signed enrollment + one-time token (latency from agent start); keys registered, sig ${d.signing?.kid.slice(0, 10)}...`,
      });
      timeline.push({
        at: request?.ackedAt ?? Date.now(),
        device: agent.deviceId,
        step: 'request',
        seq: String(request?.seq ?? '?'),
        status: request?.ackStatus ?? '?',
        code: request?.ackCode ?? '?',
        latencyMs: (request?.ackedAt ?? 0) - (request?.createdAt ?? 0),
        note: `bound to its user; verified ack`,
      });
    }),
  );

  // 2. update, rotate, delete on every board, concurrently across boards.
  const params: Record<Action, Record<string, unknown>> = {
    request: {},
    update: { sensor: { enabled: true, sample_interval_s: 15, name: 'north-wall-probe' }, reporting: { interval_s: 60, topic: 'site-7/telemetry/demo' } },
    rotate: {},
    delete: {},
    selftest: {},
    upgrade: {},
  };
  for (const s of ['north-wall-probe', 'site-7/telemetry/demo']) secrets.add(s);
  await Promise.all(
    agents.map(async (agent) => {
      for (const action of ['update', 'rotate', 'delete'] as const) {
        const before = await storage.devices.require(agent.deviceId);
        const t0 = Date.now();
        const command = await server.send({ deviceId: agent.deviceId, action, params: params[action] });
        const acked = await server.waitForAck(command.jti, STEP_TIMEOUT_MS);
        if (!acked) await fail(agent, `no ack for ${action} within ${STEP_TIMEOUT_MS} ms`);
        if (acked?.ackStatus !== 'applied') await fail(agent, `${action} was ${acked?.ackStatus} (${acked?.ackCode}: ${acked?.ackDetail})`);
        const after = await storage.devices.require(agent.deviceId);
        let note = 'verified ack';
        if (action === 'update') note = 'settings applied; verified ack';
        if (action === 'rotate') {
          if (!after.encryption || after.encryption.kid === before.encryption?.kid || after.signing?.kid === before.signing?.kid) {
            await fail(agent, 'rotate was acked but the registry holds no new keys');
          }
          note = `new keys registered: enc ${after.encryption?.kid.slice(0, 10)}..., sig ${after.signing?.kid.slice(0, 10)}...`;
        }
        if (action === 'delete') {
          if (after.state !== 'decommissioned') await fail(agent, `delete was acked but the device is ${after.state}`);
          let timer: NodeJS.Timeout | undefined;
          const code = await Promise.race([agent.exited, new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), STEP_TIMEOUT_MS)))]);
          clearTimeout(timer);
          if (code !== 10) await fail(agent, `after delete the agent should exit 10 (decommissioned), got ${code}`);
          note = 'keys wiped on the board, agent exited 10; decommissioned';
        }
        timeline.push({
          at: acked?.ackedAt ?? Date.now(),
          device: agent.deviceId,
          step: action,
          seq: String(command.seq),
          status: acked?.ackStatus ?? '?',
          code: acked?.ackCode ?? '?',
          latencyMs: Date.now() - t0,
          note,
        });
      }
    }),
  );

  // Let the spy drain, then check what the broker saw.
  await sleep(300);
  timeline.sort((a, b) => a.at - b.at);
  out('  t(ms)  device          step      seq  status    code      latency  notes');
  for (const r of timeline) {
    out(
      `  ${String(r.at - started).padStart(5)}  ${r.device.padEnd(14)}  ${r.step.padEnd(8)}  ${r.seq.padStart(3)}  ${r.status.padEnd(8)}  ${r.code.padEnd(8)}  ${`${r.latencyMs} ms`.padStart(7)}  ${r.note}`,
    );
  }
  out();

  const check = plaintextCheck(seen, secrets);
  out(
    `  the broker saw ${seen.length} messages on ${new Set(seen.map((s) => s.topic.split('/').at(-1))).size} kinds of topic (${[...new Set(seen.map((s) => s.topic.split('/').at(-1)))].join(', ')})`,
  );
  if (check.problems.length) {
    for (const p of check.problems.slice(0, 10)) out(`  PLAINTEXT: ${p}`);
    throw new DemoFailure(`${check.problems.length} message(s) crossed the broker with a plaintext claim`);
  }
  out(`  plaintext check PASSED: all ${seen.length} payloads are compact JWE (${check.algs.join(', ')}), and none carries a device id,`);
  out(`  user id, enrollment token or parameter value, in clear or in a JWE header (device ids appear only in topic names).`);
  out(`  demo OK in ${Date.now() - started} ms`);
}

/** Every payload must be a 5-part compact JWE whose header and body contain none of the secrets. */
export function plaintextCheck(seen: readonly Seen[], secrets: ReadonlySet<string>): { problems: string[]; algs: string[] } {
  const problems: string[] = [];
  const algs = new Set<string>();
  const claimNames = ['"action"', '"user_id"', '"params"', '"device_id"', '"token"'];
  for (const { topic, payload } of seen) {
    const text = payload.toString('utf8');
    if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(text)) {
      problems.push(`${topic}: not a compact JWE (${JSON.stringify(text.slice(0, 60))})`);
      continue;
    }
    let header = '';
    try {
      header = Buffer.from(text.split('.')[0] ?? '', 'base64url').toString('utf8');
      const h = JSON.parse(header) as { alg?: string; enc?: string };
      algs.add(`${h.alg}/${h.enc}`);
    } catch {
      problems.push(`${topic}: JWE header is not JSON`);
    }
    for (const s of secrets) {
      if (text.includes(s) || header.includes(s)) problems.push(`${topic}: carries "${s}"`);
    }
    for (const c of claimNames) if (header.includes(c)) problems.push(`${topic}: JWE header carries claim ${c}`);
  }
  return { problems, algs: [...algs].sort() };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
