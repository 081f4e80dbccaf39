/**
 * The real `sensor-agent run` as a child process, and the server's side of
 * the wire for tests that drive it: seal and publish commands, open and
 * collect acks. Used by the adversarial and fault suites and the benchmark.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import mqtt, { type MqttClient } from 'mqtt';
import { KeyRing, ackTopic, commandTopic, openAck, sealCommand, toPublicJwk, type AckClaims, type Action, type PublicJwk } from '../../protocol/index.js';
import type { Party } from './keys.js';

const run = promisify(execFile);
/**
 * The agent as the boards run it: the one-file bundle of the host agent tree that `npm run build`
 * writes (provisioning/builder/host-tree.ts; the same bundle build-agent ships, with this machine's
 * epoll addon beside it), not the tsc output in dist/.
 */
export const AGENT_CLI = fileURLToPath(new URL('../../../build/host/sensor-agent.mjs', import.meta.url));

export interface AgentProcess {
  child: ChildProcess;
  pid: number;
  /** stdout + stderr so far (the agent logs there). */
  output(): string;
  running(): boolean;
  /** Resolves with the exit code (or the signal name). */
  exited: Promise<number | string>;
  /** Resident set size now, in bytes (from /proc). */
  rss(): Promise<number>;
}

/**
 * The Node/V8 flags systemd/sensor-agent.service runs the agent with (a deploy test checks the unit
 * carries exactly these): a 1 MB young generation keeps the resident set small on a board at a small
 * cost in minor GCs; --single-threaded runs V8's GC on the main thread (no helper threads with their
 * stacks and malloc arenas: an agent that waits for commands has no use for concurrency); --jitless
 * runs everything in V8's interpreter: no JIT compiler (Sparkplug, Maglev, TurboFan) is ever paged
 * in or allocates code, about 5 MB less at idle on Node 26 (the compilers' machine code in the node
 * binary is what a JIT touches first), and no executable memory is written at run time. The agent
 * is idle nearly all the time and its cryptography is node:crypto's (native): an open+verify takes
 * under 1 ms without a JIT here, a few ms on a Pi core, against one command now and then.
 * --expose-gc lets the agent run one full GC when it goes quiet after start-up or a command
 * (agent/idle-gc.ts): up to 2 MB of garbage V8 would otherwise keep for hours.
 */
export const AGENT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=1', '--single-threaded', '--jitless', '--expose-gc'];

/**
 * The environment the unit sets for the agent besides its paths (the deploy test checks it carries
 * each): one glibc malloc arena instead of one per thread that ever allocates (libuv's pool,
 * Node's platform threads), about 1.7 MB less at idle; the agent's allocations are few and small.
 * (MALLOC_MMAP_THRESHOLD_=16384 with MALLOC_TRIM_THRESHOLD_=0 would return another 0.6 MB of
 * start-up memory but costs about 60 ms of start on this machine: not taken.)
 */
export const AGENT_NODE_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '1' };

/**
 * The host tree's V8 startup snapshot, as the unit uses a tree's (`--snapshot-blob=`, from
 * snapshot.env): `npm run build` makes it with the Node that ran the build, so it is used when that
 * is this Node, and not with SENSOR_AGENT_NO_SNAPSHOT=1 (to run the agent from the bundle alone).
 */
export function hostSnapshot(): string | undefined {
  if (process.env.SENSOR_AGENT_NO_SNAPSHOT === '1') return undefined;
  try {
    const info = JSON.parse(readFileSync(join(dirname(AGENT_CLI), '.build-info.json'), 'utf8')) as { snapshot?: { path?: string; node_version?: string } };
    if (info.snapshot?.path === undefined || info.snapshot.node_version !== process.versions.node) return undefined;
    return join(dirname(AGENT_CLI), info.snapshot.path);
  } catch {
    return undefined;
  }
}

/** `options.snapshot`: the startup snapshot to start from (made by `node`), `false` for none; by default the host tree's for this Node. */
export function spawnAgent(
  configPath: string,
  extraEnv: Record<string, string> = {},
  node: string = process.execPath,
  options: { snapshot?: string | false } = {},
): AgentProcess {
  const snapshot = options.snapshot ?? (node === process.execPath ? hostSnapshot() : undefined);
  const child = spawn(node, [...AGENT_NODE_FLAGS, ...(snapshot ? [`--snapshot-blob=${snapshot}`] : []), AGENT_CLI, 'run', '--config', configPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...AGENT_NODE_ENV, NOTIFY_SOCKET: '', ...extraEnv },
  });
  let out = '';
  const keep = (b: Buffer): void => {
    out = (out + b.toString('utf8')).slice(-200_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<number | string>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  return {
    child,
    pid: child.pid ?? -1,
    output: () => out,
    running: () => child.exitCode === null && child.signalCode === null,
    exited,
    rss: () => rssOf(child.pid ?? -1),
  };
}

export async function rssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/** `sensor-agent status --json` as the operator sees it. */
export async function agentStatus(configPath: string): Promise<Record<string, unknown>> {
  const { stdout } = await run(process.execPath, [AGENT_CLI, 'status', '--json', '--config', configPath]);
  return JSON.parse(stdout) as Record<string, unknown>;
}

export interface ReceivedAck {
  claims: AckClaims;
  at: number;
}

/**
 * The server's side for one device: seals with the server's keys, publishes
 * at QoS 1, opens every ack on the device's ack topic (decrypted with the
 * server's key, verified against the device's signing key).
 */
export class TestSender {
  readonly acks: ReceivedAck[] = [];
  /** Acks that did not open (must stay empty). */
  readonly badAcks: string[] = [];
  seq = 0;
  /** Second deliveries of an ack already received (same ack jti), not counted in `acks`. */
  redeliveredAcks = 0;
  #ackJtis = new Set<string>();
  #client!: MqttClient;
  #decryption!: KeyRing;
  #verification!: KeyRing;
  #waiters: { match: (a: AckClaims) => boolean; resolve: (a: AckClaims) => void }[] = [];

  constructor(
    readonly server: Party,
    readonly serverId: string,
    readonly prefix: string,
    readonly deviceId: string,
    readonly device: { signing: PublicJwk; encryption: PublicJwk },
  ) {}

  /** `tls`: CA and client certificate (PEM) for an `mqtts://` broker that requires one. */
  async connect(
    url: string,
    clientId = `test-sender-${Math.random().toString(16).slice(2, 8)}`,
    tls?: { ca: Buffer; cert: Buffer; key: Buffer },
  ): Promise<void> {
    this.#decryption = await KeyRing.create([this.server.encryption]);
    this.#verification = await KeyRing.create([this.device.signing]);
    this.#client = await mqtt.connectAsync(url, { clientId, clean: false, reconnectPeriod: 200, protocolVersion: 4, ...(tls ?? {}) });
    this.#client.on('error', () => undefined);
    this.#client.on('message', (_t, payload) => {
      void openAck(payload, { serverId: this.serverId, deviceId: this.deviceId, decryption: this.#decryption, verification: this.#verification }).then(
        ({ claims }) => {
          // QoS 1 is at least once: the same ack (same ack jti) can arrive twice, e.g. across a broker restart.
          if (this.#ackJtis.has(claims.jti)) {
            this.redeliveredAcks++;
            return;
          }
          this.#ackJtis.add(claims.jti);
          this.acks.push({ claims, at: Date.now() });
          this.#waiters = this.#waiters.filter((w) => {
            if (!w.match(claims)) return true;
            w.resolve(claims);
            return false;
          });
        },
        () => this.badAcks.push(payload.toString('latin1').slice(0, 200)),
      );
    });
    await this.#client.subscribeAsync(ackTopic(this.prefix, this.deviceId), { qos: 1 });
  }

  get client(): MqttClient {
    return this.#client;
  }

  async seal(
    action: Action,
    params: Record<string, unknown> = {},
    options: { seq?: number; jti?: string } = {},
  ): Promise<{ token: string; jti: string; seq: number }> {
    const seq = options.seq ?? ++this.seq;
    const { token, claims } = await sealCommand(
      { serverId: this.serverId, deviceId: this.deviceId, action, userId: 'tester', params, seq, ...(options.jti ? { jti: options.jti } : {}) },
      { signer: this.server.signing, recipient: this.device.encryption },
    );
    return { token, jti: claims.jti, seq };
  }

  async publish(payload: string | Buffer, topicDeviceId = this.deviceId, qos: 0 | 1 = 1): Promise<void> {
    await this.#client.publishAsync(commandTopic(this.prefix, topicDeviceId), payload, { qos });
  }

  /** Resolves with the first ack (already received or to come) matching, or rejects after `timeoutMs`. */
  waitAck(match: (a: AckClaims) => boolean, timeoutMs = 15_000): Promise<AckClaims> {
    const have = this.acks.find((a) => match(a.claims));
    if (have) return Promise.resolve(have.claims);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w.resolve !== done);
        reject(new Error(`no matching ack within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = (a: AckClaims): void => {
        clearTimeout(timer);
        resolve(a);
      };
      this.#waiters.push({ match, resolve: done });
    });
  }

  async send(action: Action, params: Record<string, unknown> = {}, timeoutMs = 15_000): Promise<AckClaims> {
    const { token, jti } = await this.seal(action, params);
    await this.publish(token);
    return this.waitAck((a) => a.ref === jti, timeoutMs);
  }

  async close(): Promise<void> {
    await this.#client?.endAsync(true).catch(() => undefined);
  }
}

export { toPublicJwk };
