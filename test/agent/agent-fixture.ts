/**
 * A device on disk (config, trust anchors, key store or enrollment token,
 * state dir) and a minimal server acting over a real broker: it seals
 * commands with the protocol layer, opens acks and answers enrollments.
 */
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import {
  KeyRing,
  ackTopic,
  commandTopic,
  enrollTopic,
  openAck,
  openEnrollment,
  sealCommand,
  toJwkSet,
  toPublicJwk,
  type AckClaims,
  type Action,
  type PublicJwk,
} from '../../protocol/index.js';
import { KeyStore } from '../../agent/store/keystore.js';
import { startAgent, type RunningAgent, type StartAgentOptions } from '../../agent/agent.js';
import { startAedes, type AedesBroker } from '../helpers/brokers.js';
import type { AgentProcess } from '../helpers/agent-process.js';
import { makeParty, type Party } from '../helpers/keys.js';
import type { AgentState } from '../../agent/store/state.js';

export const SERVER_ID = 'provision-server';
export const PREFIX = 'provision';

export interface DeviceFiles {
  dir: string;
  configPath: string;
  keystore: string;
  stateDir: string;
  tokenFile: string;
  hooksDir: string;
}

export interface DeviceOptions {
  deviceId: string;
  brokerUrl: string;
  caFile?: string;
  server: Party;
  /** Generate device keys now (else an enrollment token is written). */
  keys?: boolean;
  token?: string;
  extra?: Record<string, unknown>;
}

export async function makeDevice(opts: DeviceOptions): Promise<DeviceFiles> {
  const dir = await mkdtemp(join(tmpdir(), `agent-${opts.deviceId}-`));
  const files: DeviceFiles = {
    dir,
    configPath: join(dir, 'config.json'),
    keystore: join(dir, 'keys'),
    stateDir: join(dir, 'state'),
    tokenFile: join(dir, 'enroll.token'),
    hooksDir: join(dir, 'hooks'),
  };
  await mkdir(files.hooksDir);
  await writeFile(join(dir, 'trust.jwks'), JSON.stringify(toJwkSet([toPublicJwk(opts.server.signing), toPublicJwk(opts.server.encryption)])));
  if (opts.keys) {
    const ks = await KeyStore.open(files.keystore, { create: true });
    await ks.generate();
  }
  if (opts.token !== undefined) await writeFile(files.tokenFile, `${opts.token}\n`, { mode: 0o600 });
  const config = {
    device_id: opts.deviceId,
    server_id: SERVER_ID,
    topic_prefix: PREFIX,
    broker: { url: opts.brokerUrl, ...(opts.caFile ? { ca: opts.caFile } : {}) },
    keystore: 'keys',
    trust: 'trust.jwks',
    state_dir: 'state',
    enrollment_token: 'enroll.token',
    gpio: { backend: 'fake', sensor_enable: 27, status_led: 17 },
    hooks_dir: 'hooks',
    hook_timeout_s: 5,
    clock: { policy: 'trusted' },
    log_level: 'debug',
    ...opts.extra,
  };
  await writeFile(files.configPath, JSON.stringify(config, null, 2));
  return files;
}

export async function readDeviceState(files: DeviceFiles): Promise<AgentState> {
  const state: AgentState = JSON.parse(await readFile(join(files.stateDir, 'state.json'), 'utf8'));
  return state;
}

export interface ReceivedAck {
  claims: AckClaims;
  signerKid: string;
}

/** The server side for tests: seals and publishes commands, opens acks, answers enrollments with `request`. */
export class TestServer {
  readonly acks: ReceivedAck[] = [];
  readonly rawAcks: string[] = [];
  readonly enrollments: string[] = [];
  /** Messages the server could not open (refused acks or enrollments), for diagnosis. */
  readonly errors: string[] = [];
  /** Device public keys as the server knows them. */
  readonly devices = new Map<string, { signing: PublicJwk[]; encryption: PublicJwk }>();
  seq = new Map<string, number>();
  #client!: MqttClient;
  #waiters: { match: (a: ReceivedAck) => boolean; resolve: (a: ReceivedAck) => void }[] = [];
  #tokens = new Map<string, { token: string; userId: string }>();

  constructor(
    readonly party: Party,
    readonly brokerUrl: string,
    readonly caFile?: string,
  ) {}

  async connect(): Promise<void> {
    const ca = this.caFile ? await readFile(this.caFile) : undefined;
    this.#client = await mqtt.connectAsync(this.brokerUrl, {
      clientId: `test-server-${Math.random().toString(16).slice(2, 8)}`,
      clean: false,
      reconnectPeriod: 100,
      ...(ca ? { ca } : {}),
    });
    this.#client.on('message', (topic, payload) => {
      this.#onMessage(topic, payload).catch((err: unknown) => this.errors.push(`${topic}: ${err instanceof Error ? err.message : String(err)}`));
    });
    await this.#client.subscribeAsync([`${PREFIX}/+/ack`, `${PREFIX}/+/enroll`], { qos: 1 });
  }

  get client(): MqttClient {
    return this.#client;
  }

  async close(): Promise<void> {
    await this.#client.endAsync(true);
  }

  expectEnrollment(deviceId: string, token: string, userId: string): void {
    this.#tokens.set(deviceId, { token, userId });
  }

  register(deviceId: string, keys: { signing: PublicJwk; encryption: PublicJwk }): void {
    this.devices.set(deviceId, { signing: [keys.signing], encryption: keys.encryption });
  }

  async registerFromKeystore(deviceId: string, keystore: string): Promise<void> {
    const ks = await KeyStore.open(keystore);
    this.register(deviceId, { signing: toPublicJwk(ks.signingKey!), encryption: toPublicJwk(ks.encryptionKey!) });
  }

  nextSeq(deviceId: string): number {
    const n = (this.seq.get(deviceId) ?? 0) + 1;
    this.seq.set(deviceId, n);
    return n;
  }

  /** Seals a command to the device's registered encryption key. */
  async seal(
    deviceId: string,
    action: Action,
    params: unknown = {},
    o: { seq?: number; userId?: string; now?: number; ttlSeconds?: number; signer?: Party; claimsDevice?: string } = {},
  ): Promise<{ token: string; jti: string; seq: number }> {
    const dev = this.devices.get(deviceId);
    if (!dev) throw new Error(`device ${deviceId} not registered in the test server`);
    const seq = o.seq ?? this.nextSeq(deviceId);
    const { token, claims } = await sealCommand(
      {
        serverId: SERVER_ID,
        deviceId: o.claimsDevice ?? deviceId,
        action,
        userId: o.userId ?? 'user-1',
        params,
        seq,
        ...(o.now !== undefined ? { now: o.now } : {}),
        ...(o.ttlSeconds !== undefined ? { ttlSeconds: o.ttlSeconds } : {}),
      },
      { signer: (o.signer ?? this.party).signing, recipient: dev.encryption },
    );
    return { token, jti: claims.jti, seq };
  }

  async publish(deviceId: string, token: string): Promise<void> {
    await this.#client.publishAsync(commandTopic(PREFIX, deviceId), token, { qos: 1 });
  }

  /** Seals, publishes and waits for the ack. */
  async command(deviceId: string, action: Action, params: unknown = {}, o: Parameters<TestServer['seal']>[3] = {}): Promise<ReceivedAck> {
    return (await this.commandCaptured(deviceId, action, params, o)).ack;
  }

  /** As command, also returning the sealed command (its bytes, captured for a replay). */
  async commandCaptured(
    deviceId: string,
    action: Action,
    params: unknown = {},
    o: Parameters<TestServer['seal']>[3] = {},
  ): Promise<{ token: string; jti: string; seq: number; ack: ReceivedAck }> {
    const sealed = await this.seal(deviceId, action, params, o);
    const wait = this.waitAck((a) => a.claims.ref === sealed.jti);
    await this.publish(deviceId, sealed.token);
    return { ...sealed, ack: await wait };
  }

  waitAck(match: (a: ReceivedAck) => boolean, timeoutMs = 8000): Promise<ReceivedAck> {
    const found = this.acks.find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const t = setTimeout(
        () => reject(new Error(`no matching ack in time${this.errors.length ? `; messages refused: ${this.errors.join('; ')}` : ''}`)),
        timeoutMs,
      );
      this.#waiters.push({
        match,
        resolve: (a) => {
          clearTimeout(t);
          resolve(a);
        },
      });
    });
  }

  async #onMessage(topic: string, payload: Buffer): Promise<void> {
    const [, deviceId, kind] = topic.split('/');
    if (!deviceId) return;
    if (kind === 'enroll') {
      this.enrollments.push(deviceId);
      const opened = await openEnrollment(payload, { serverId: SERVER_ID, topicDeviceId: deviceId, decryption: await KeyRing.create([this.party.encryption]) });
      const expected = this.#tokens.get(deviceId);
      if (!expected || expected.token !== opened.claims.token) return;
      this.register(deviceId, { signing: opened.signing, encryption: opened.encryption });
      const sealed = await this.seal(deviceId, 'request', {}, { userId: expected.userId });
      await this.publish(deviceId, sealed.token);
      return;
    }
    if (kind !== 'ack') return;
    const dev = this.devices.get(deviceId);
    if (!dev) return;
    this.rawAcks.push(payload.toString());
    const opened = await openAck(payload, {
      serverId: SERVER_ID,
      deviceId,
      decryption: await KeyRing.create([this.party.encryption]),
      verification: await KeyRing.create(dev.signing),
    });
    const ack: ReceivedAck = { claims: opened.claims, signerKid: opened.signerKid };
    this.acks.push(ack);
    for (const w of [...this.#waiters]) {
      if (w.match(ack)) {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        w.resolve(ack);
      }
    }
  }
}

export async function newServerParty(): Promise<Party> {
  return makeParty();
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

export { ackTopic, enrollTopic };

export async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** Registers an afterEach that prints what the agent logged during a failed test. */
export function showAgentLogOnFailure(logs: { lines: string[] }): void {
  let shown = 0;
  afterEach(function () {
    if (this.currentTest?.state === 'failed') process.stderr.write(`--- agent log ---\n${logs.lines.slice(shown).join('\n')}\n---\n`);
    shown = logs.lines.length;
  });
}

/** Polls `cond` every 20 ms until it holds; fails naming `what` after `timeoutMs`. */
export async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 8000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** What an in-process agent suite over aedes shares; filled by its `before` hook. */
export interface AedesSuite {
  broker: AedesBroker;
  party: Party;
  server: TestServer;
  /** Device directories, removed after the suite. */
  dirs: string[];
  /** Agents stopped after each test. */
  running: Set<RunningAgent>;
}

/**
 * Registers the hooks of such a suite: aedes and a test server before it,
 * the agent log on a failed test, running agents stopped after each test,
 * everything removed after it.
 */
export function useAedesSuite(logs: { lines: string[] }): AedesSuite {
  const suite = { dirs: [] as string[], running: new Set<RunningAgent>() } as AedesSuite;
  before(async function () {
    suite.broker = await startAedes();
    suite.party = await makeParty();
    suite.server = new TestServer(suite.party, suite.broker.url);
    await suite.server.connect();
  });
  showAgentLogOnFailure(logs);
  afterEach(async function () {
    for (const a of suite.running) await a.stop();
    suite.running.clear();
  });
  after(async function () {
    await suite.server?.close();
    await suite.broker?.stop();
    for (const d of suite.dirs) await removeDir(d);
  });
  return suite;
}

/** What a suite driving one `sensor-agent run` process over aedes shares; filled by its `before` hook. */
export interface AgentProcessSuite {
  broker: AedesBroker;
  server: TestServer;
  /** The device (host-made keys, registered with the server, log_level info). */
  files: DeviceFiles;
  /** The agent process a test started, if any: killed after the suite. */
  agent: AgentProcess | undefined;
}

/**
 * Registers the hooks of such a suite: aedes, a test server and the device
 * `deviceId` before it; after it, the agent (if still running) killed with
 * `stopSignal` and waited for, then everything closed and removed.
 */
export function useAgentProcessSuite(deviceId: string, stopSignal: NodeJS.Signals): AgentProcessSuite {
  const suite = { agent: undefined } as AgentProcessSuite;
  before(async function () {
    suite.broker = await startAedes();
    const party = await makeParty();
    suite.server = new TestServer(party, suite.broker.url);
    await suite.server.connect();
    suite.files = await makeDevice({ deviceId, brokerUrl: suite.broker.url, server: party, keys: true, extra: { log_level: 'info' } });
    await suite.server.registerFromKeystore(deviceId, suite.files.keystore);
  });
  after(async function () {
    if (suite.agent?.running()) {
      suite.agent.child.kill(stopSignal);
      await suite.agent.exited;
    }
    await suite.server?.close();
    await suite.broker?.stop();
    if (suite.files) await removeDir(suite.files.dir);
  });
  return suite;
}

/** A device with host-made keys (plus `extra` options) registered with the suite's server; removed after the suite. */
export async function addSuiteDevice(suite: AedesSuite, deviceId: string, extra: Partial<DeviceOptions> = {}): Promise<DeviceFiles> {
  const files = await makeDevice({ deviceId, brokerUrl: suite.broker.url, server: suite.party, keys: true, ...extra });
  suite.dirs.push(files.dir);
  await suite.server.registerFromKeystore(deviceId, files.keystore);
  return files;
}

/** Starts an in-process agent of the suite (stopped after the test) and waits until it is connected. */
export async function startSuiteAgent(suite: AedesSuite, options: StartAgentOptions): Promise<RunningAgent> {
  const agent = await startAgent(options);
  suite.running.add(agent);
  if (!agent.connected) await new Promise<void>((r) => agent.once('ready', () => r()));
  return agent;
}

/** Stops an agent of the suite now. */
export async function stopSuiteAgent(suite: AedesSuite, agent: RunningAgent): Promise<void> {
  await agent.stop();
  suite.running.delete(agent);
}

/** Why startAgent refused to start: its typed error (code; its exit status: agentExitStatus), if it carries one. */
export type StartRefusal = Error & { code?: string };

/** Starts an agent of the suite that is expected to refuse; returns its error, or undefined when it started (stopped after the test). */
export async function startRefusal(suite: AedesSuite, options: StartAgentOptions): Promise<StartRefusal | undefined> {
  try {
    const agent = await startAgent(options);
    suite.running.add(agent);
    return undefined;
  } catch (err) {
    return err as StartRefusal;
  }
}
