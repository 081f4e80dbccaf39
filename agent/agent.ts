/**
 * The agent, programmatically: `startAgent({ configPath })` loads and checks
 * everything, connects, and runs until `stop()` or a `delete` command.
 * `sensor-agent run` is a thin wrapper around it; tests and the server's
 * fleet simulation start many in one process (nothing here is global, and an
 * idle connected agent holds no timer besides mqtt.js's keepalive).
 *
 * The start-up decisions (enroll, wait, refuse) are agent/start-up.ts; here
 * the objects are made, each complete, and wired.
 */
import { EventEmitter } from 'node:events';
import { assertJosePatched, KeyRing, type ClockPolicy } from '../protocol/index.js';
import { createLogger, type Logger } from '../lib/log.js';
import { decommission, EXIT_DECOMMISSIONED, wipeDevice } from './actions/delete.js';
import type { ActionContext } from './actions/descriptor.js';
import { Pipeline, type CommandEvent, type FollowUp } from './actions/pipeline.js';
import { resumeRotation } from './actions/rotate.js';
import { applyGpioSettings, effectivePins, finishBrokerChange, sensorShouldBeOn } from './actions/update.js';
import { loadConfig, type AgentConfig } from './config.js';
import { createBoardIo, type BoardIo, type GpioBackend } from './gpio/index.js';
import { Enrollment, readEnrollmentToken, type EnrollmentOptions } from './net/enrollment.js';
import { MqttSession, type BackoffOptions, type RetryInfo, type SessionBroker } from './net/mqtt-session.js';
import { Reporter } from './net/reporter.js';
import { AgentRuntime, agentTopics, effectiveBroker } from './runtime.js';
import { UpgradeManager } from './upgrade/manager.js';
import type { DownloadTimings } from './upgrade/download.js';
import { chunkTopic } from '../protocol/index.js';
import { planStart, type StartPlan } from './start-up.js';
import { KeyStore } from './store/keystore.js';
import { loadSelftestRecord } from './store/selftest-record.js';
import { StateStore, type StateStoreOptions, type StoredBroker } from './store/state.js';
import { loadTrustAnchors, type TrustAnchors } from './store/trust.js';
import { clockStatus, toClockPolicy } from './system/clock.js';
import { IdleCollector } from './system/idle-gc.js';
import { createSystemdNotifier, type SystemdNotifier } from './system/systemd-notify.js';

export { AgentStartError } from './start-up.js';

const CLOCK_RECHECK_MS = 30_000;
/** How long a graceful stop waits for the explicit `offline` report's PUBACK. */
const OFFLINE_REPORT_TIMEOUT_MS = 2000;
export const EXIT_OK = 0;
export { EXIT_DECOMMISSIONED };

export interface AgentEvents {
  /** Connected and subscribed to the command topic. */
  ready: [];
  /** A command was processed (or refused after authentication, or re-acked as a duplicate). */
  command: [CommandEvent];
  /** Enrollment sent (each attempt). */
  enrolling: [];
  /** Became provisioned (request applied). */
  provisioned: [userId: string];
}

export interface RunningAgent extends EventEmitter<AgentEvents> {
  readonly deviceId: string;
  /** Finishes the command in flight, disconnects cleanly; `exited` then resolves 0. */
  stop(): Promise<void>;
  /** The exit status `run` would use: 0 stopped, 10 decommissioned. */
  readonly exited: Promise<number>;
  /** Connected and subscribed now. */
  readonly connected: boolean;
}

export interface StartAgentOptions {
  configPath: string;
  log?: Logger;
  /**
   * Report readiness, status and watchdog pings to systemd when NOTIFY_SOCKET is set (the `run`
   * command). READY=1 is sent once the local start-up is done (config, key store, state, trust
   * anchors, GPIO), before the broker is reached: the broker is retried in process for as long as
   * it takes, and STATUS= says what the agent waits for.
   */
  systemdNotify?: boolean;
  /** Reconnect backoff (default 1 s doubling to 60 s, with jitter). */
  backoff?: BackoffOptions;
  /** Enrollment retry backoff (default 5 s doubling to 5 min, with jitter). */
  enrollment?: EnrollmentOptions;
  /** Use this GPIO backend instead of the one the config names (tests inject a recording fake). */
  gpioBackend?: GpioBackend;
  /** Test hooks: crash simulation in state writes and between persist and PUBACK. */
  faults?: AgentFaults;
  /** Upgrade download timings (tests: a short re-request timeout). */
  upgradeTimings?: Partial<DownloadTimings>;
}

export interface AgentFaults extends StateStoreOptions {
  /** Called after a command's state is saved, before its PUBACK; throwing simulates a crash there. */
  afterPersist?: (action: string) => void | Promise<void>;
}

export async function startAgent(options: StartAgentOptions): Promise<RunningAgent> {
  const config = await loadConfig(options.configPath);
  // Refused at start (exit 2), not at the first command: an unpatched node-jose seals and opens nothing.
  await assertJosePatched();
  const log = options.log ?? createLogger({ level: config.log_level });
  const trust = await loadTrustAnchors(config.trust);
  const keystore = await KeyStore.open(config.keystore, { create: true, credentialsDir: process.env.CREDENTIALS_DIRECTORY });
  const store = await StateStore.open(config.state_dir, config.device_id, options.faults);
  const plan = await planStart({ config, log, keystore, store, token: await readEnrollmentToken(config.enrollment_token) });

  const clock = await clockStatus(config.clock.policy);
  log.info('clock', { trusted: clock.trusted, reason: clock.reason });
  const io = await createBoardIo(
    { ...config.gpio, ...effectivePins(config.gpio, store.state.settings) },
    log.child({ component: 'gpio' }),
    options.gpioBackend ? { backend: options.gpioBackend } : {},
  );
  io.onError((err) => log.warn('GPIO problem', { reason: err.message }));
  const agent = new Agent({
    config,
    log,
    options,
    trust,
    keystore,
    store,
    io,
    plan,
    clockTrusted: clock.trusted,
    clock: toClockPolicy(clock, config.clock.max_skew_s),
    decryption: await KeyRing.create(keystore.decryptionKeys()),
    broker: await effectiveBroker(config, store.state.settings.broker),
  });
  await agent.start();
  return agent;
}

/** What an Agent is made from: everything start-up opened and decided. */
interface AgentParts {
  readonly config: AgentConfig;
  readonly log: Logger;
  readonly options: StartAgentOptions;
  readonly trust: TrustAnchors;
  readonly keystore: KeyStore;
  readonly store: StateStore;
  readonly io: BoardIo;
  readonly plan: StartPlan;
  readonly clockTrusted: boolean;
  readonly clock: ClockPolicy;
  readonly decryption: KeyRing;
  readonly broker: SessionBroker;
}

class Agent extends EventEmitter<AgentEvents> implements RunningAgent {
  readonly deviceId: string;
  readonly exited: Promise<number>;
  readonly #resolveExit: (status: number) => void;
  readonly #config: AgentConfig;
  readonly #log: Logger;
  readonly #options: StartAgentOptions;
  readonly #rt: AgentRuntime;
  readonly #io: BoardIo;
  readonly #pipeline: Pipeline;
  readonly #actions: ActionContext;
  readonly #clockTrusted: boolean;
  /** Presence and reported state (connect, interval, the will, offline at stop). */
  readonly #reporter: Reporter;
  /** An upgrade's download, trial progress and result (agent/upgrade/manager.ts). */
  readonly #upgrades: UpgradeManager;
  #enrollment: Enrollment | undefined;
  #notifier: SystemdNotifier | undefined;
  #follow: Promise<void> = Promise.resolve();
  /** Settles when the command being processed (pipeline.handle) is done; see #onMessage. */
  #handling: Promise<void> = Promise.resolve();
  /** Messages in #onMessage (the one processed and those waiting behind it). */
  #queued = 0;
  #stopPromise: Promise<void> | undefined;
  #exitStatus = EXIT_OK;
  #busySince = 0;
  #clockTimer: NodeJS.Timeout | undefined;
  /** A full GC once the agent is quiet after start-up or a command (agent/system/idle-gc.ts). */
  readonly #idleGc = new IdleCollector();

  /** Wires the parts (nothing starts yet): session, runtime, pipeline, enrollment. */
  constructor(parts: AgentParts) {
    super();
    const { config, log, options } = parts;
    this.deviceId = config.device_id;
    let resolveExit: (status: number) => void = () => undefined;
    this.exited = new Promise((r) => (resolveExit = r));
    this.#resolveExit = resolveExit;
    this.#config = config;
    this.#log = log;
    this.#options = options;
    this.#io = parts.io;
    this.#clockTrusted = parts.clockTrusted;
    const session = new MqttSession({
      clientId: config.device_id,
      broker: parts.broker,
      topic: agentTopics(config).command,
      log,
      onMessage: (topic, payload) => this.#onMessage(topic, payload),
      dataTopic: chunkTopic(config.topic_prefix, config.device_id),
      onData: (payload) => this.#upgrades.onData(payload),
      will: () => this.#reporter.will(),
      ...(options.backoff ? { backoff: options.backoff } : {}),
    });
    this.#rt = new AgentRuntime({
      config,
      log,
      keystore: parts.keystore,
      store: parts.store,
      trust: parts.trust,
      io: parts.io,
      session,
      decryption: parts.decryption,
      clock: parts.clock,
      requestExit: (status, why) => {
        log.info('exiting', { status, reason: why });
        this.#exitStatus = status;
        void this.stop();
      },
      afterPersist: options.faults?.afterPersist,
    });
    this.#reporter = new Reporter(this.#rt, {
      upgrade: () => this.#upgrades.report(),
      published: () => this.#upgrades.onReportPublished(),
    });
    this.#upgrades = new UpgradeManager(this.#rt, {
      onChanged: () => this.#reporter.changed(),
      ...(options.upgradeTimings ? { timings: options.upgradeTimings } : {}),
    });
    this.#actions = {
      rt: this.#rt,
      onProvisioned: (userId) => this.#onProvisioned(userId),
      switchBroker: (b, ms) => this.#switchBroker(b, ms),
      beginUpgrade: (pending) => this.#upgrades.begin(pending),
    };
    this.#pipeline = new Pipeline(this.#actions, (e) => {
      if (e.status === 'applied' && !e.duplicate) this.#reporter.changed();
      this.emit('command', e);
    });
    if (parts.plan.enrolling) this.#enrollment = new Enrollment(this.#rt, parts.plan.token, options.enrollment);
  }

  get connected(): boolean {
    return this.#rt.session.ready;
  }

  /** Resumes what a crash interrupted, sets the board's outputs, connects, tells systemd. */
  async start(): Promise<void> {
    const rt = this.#rt;
    const log = this.#log;
    const st = rt.store.state;
    if (!this.#clockTrusted && this.#config.clock.policy === 'auto') this.#watchClock(rt);
    await this.#reporter.prepare();
    // Reports carry the last self-test result: a selftest.json that cannot be trusted is said once, here.
    void loadSelftestRecord(rt.store.dir).catch((err: unknown) => log.error('self-test record refused', { reason: (err as Error).message }));
    const resumedAck = await resumeRotation(rt);

    this.#io.setStatus(st.provisioned ? 'provisioned' : this.#enrollment ? 'enrolling' : 'unprovisioned');
    await this.#io.setSensorEnabled(sensorShouldBeOn(st));
    this.#io.onResetHeld(() => void this.#resetToUnprovisioned());

    rt.session.on('connected', () => this.#reporter.onConnected());
    rt.session.on('subscribed', () => this.#onSubscribed());
    rt.session.on('subscribed', () => this.#upgrades.onSubscribed());
    rt.session.on('offline', () => this.#reporter.onOffline());
    rt.session.on('offline', () => this.#upgrades.onOffline());
    // An upgrade on trial, a result of the installer to ack, a download to resume.
    await this.#upgrades.start().catch((err: unknown) => log.error('upgrade state could not be resumed', { reason: (err as Error).message }));
    // `systemctl status` shows the last STATUS=: keep it true across broker outages.
    rt.session.on('retrying', (r) => this.#notifier?.status(waitingStatus(rt.session.broker.url, r)));
    if (this.#options.systemdNotify) {
      this.#notifier = createSystemdNotifier(log);
      this.#notifier.startWatchdog(() => this.#healthy());
    }
    const pending = st.pending_broker;
    // The ack of a rotation completed just before a crash may never have left: send it (a duplicate is harmless).
    if (resumedAck) rt.publishAck(resumedAck.token, { ref: resumedAck.jti, status: 'applied', resumed: 'yes' });
    rt.session.start();
    // Ready now, not at the first subscription: a board that boots without its broker (no network
    // yet, DNS, TLS before the clock is set) must not time out its start and be given up on by
    // systemd. From here the agent waits for the broker itself, for as long as it takes.
    this.#notifier?.ready(`connecting to broker ${rt.session.broker.url}`);
    log.info('agent started', {
      device: this.deviceId,
      provisioned: rt.store.state.provisioned,
      enrolling: this.#enrollment !== undefined,
      broker: rt.session.broker.url,
      gpio: this.#io.backend,
    });
    if (pending) {
      this.#follow = this.#follow
        .then(() => finishBrokerChange(rt, pending, this.#actions))
        .catch((err: unknown) => log.error('broker change could not be resumed', { reason: (err as Error).message }));
    }
    this.#idleGc.poke();
  }

  #connectedStatus(): void {
    const url = this.#rt.session.broker.url;
    this.#notifier?.status(this.#enrollment ? `connected to ${url}, enrolling: waiting for the server's request` : `connected to ${url}`);
  }

  #onSubscribed(): void {
    this.#connectedStatus();
    this.#reporter.onSubscribed();
    if (this.#enrollment) {
      this.#enrollment.kick();
      this.emit('enrolling');
    }
    this.emit('ready');
    this.#idleGc.poke();
  }

  /**
   * One command at a time, across connections: mqtt.js hands over the next message of a connection only
   * after the previous one's PUBACK, but after a reconnect the broker redelivers a command still being
   * processed (no PUBACK yet) on the new connection at once. That copy waits here for the first one to
   * be saved, then finds its jti in the recent window and is answered as a duplicate, never applied twice.
   */
  async #onMessage(topic: string, payload: Buffer): Promise<void> {
    const previous = this.#handling;
    let release!: () => void;
    this.#handling = new Promise<void>((r) => (release = r));
    this.#queued += 1;
    try {
      if (this.#queued > 1) this.#log.info('command received while another is processed: it waits for the command in progress');
      await previous;
      await this.#follow;
      this.#busySince = Date.now();
      let follow: FollowUp | undefined;
      try {
        follow = await this.#pipeline.handle(topic, payload);
      } finally {
        this.#busySince = 0;
      }
      if (follow) {
        const run = follow;
        // After the PUBACK (sent when this resolves).
        this.#follow = new Promise<void>((r) => setImmediate(r))
          .then(run)
          .catch((err: unknown) => this.#log.error('after-ack work failed', { reason: (err as Error).message }))
          .finally(() => this.#idleGc.poke());
      }
    } finally {
      this.#queued -= 1;
      release();
    }
    this.#idleGc.poke();
  }

  async #onProvisioned(userId: string): Promise<void> {
    if (this.#enrollment) {
      await this.#enrollment.complete();
      this.#enrollment = undefined;
      if (this.#rt.session.ready) this.#connectedStatus();
    }
    this.#io.setStatus('provisioned');
    await applyGpioSettings(this.#rt, this.#rt.store.state);
    this.#log.info('provisioned', { user: userId });
    this.emit('provisioned', userId);
  }

  async #switchBroker(stored: StoredBroker | undefined, timeoutMs: number): Promise<boolean> {
    const rt = this.#rt;
    await rt.session.switchBroker(await rt.effectiveBroker(stored));
    if (timeoutMs <= 0) return true;
    return rt.session.waitReady(timeoutMs);
  }

  async #resetToUnprovisioned(): Promise<void> {
    const rt = this.#rt;
    this.#log.warn('reset button held: resetting the board to unprovisioned');
    await rt.store.update((d) => decommission(d));
    await wipeDevice(rt);
    rt.requestExit(EXIT_DECOMMISSIONED, 'reset to unprovisioned at the board');
  }

  /** Healthy: not stuck on one command for longer than a hook could take, and the last state write worked. */
  #healthy(): boolean {
    if (this.#busySince !== 0 && Date.now() - this.#busySince > (this.#config.hook_timeout_s + 60) * 1000) return false;
    return true;
  }

  /**
   * A board often starts before NTP has synchronised (no RTC): with policy
   * `auto`, look again every 30 s and start checking `exp`/`iat` once it has.
   */
  #watchClock(rt: AgentRuntime): void {
    this.#clockTimer = setInterval(() => {
      void clockStatus('auto').then((c) => {
        if (!c.trusted || rt.clock.trusted || rt.stopping) return;
        rt.clock = toClockPolicy(c, this.#config.clock.max_skew_s);
        clearInterval(this.#clockTimer);
        this.#log.info('clock now synchronised: exp and iat are checked from here on', { reason: c.reason });
      });
    }, CLOCK_RECHECK_MS).unref();
  }

  stop(): Promise<void> {
    this.#stopPromise ??= this.#stop();
    return this.#stopPromise;
  }

  async #stop(): Promise<void> {
    const rt = this.#rt;
    rt.markStopping();
    clearInterval(this.#clockTimer);
    this.#idleGc.stop();
    this.#notifier?.stopping();
    this.#enrollment?.stop();
    await this.#upgrades.stop();
    await rt.session.drain();
    await Promise.race([this.#follow, new Promise((r) => setTimeout(r, 5000).unref())]);
    await rt.flushAcks(3000);
    await this.#reporter.stop(OFFLINE_REPORT_TIMEOUT_MS);
    await rt.session.stop();
    this.#notifier?.close();
    await this.#io.close().catch(() => undefined);
    this.#log.info('agent stopped', { status: this.#exitStatus });
    this.#resolveExit(this.#exitStatus);
  }
}

/**
 * STATUS= while the broker is unreachable, e.g. "waiting for broker mqtts://host:8883: ECONNREFUSED,
 * attempt 7, next in 32 s", or "disconnected from mqtts://host:8883: connection closed, reconnecting,
 * attempt 1, next in 1 s" right after a connection was lost.
 */
export function waitingStatus(url: string, r: RetryInfo): string {
  const next = r.delayMs < 1000 ? `${r.delayMs} ms` : `${Math.round(r.delayMs / 1000)} s`;
  return `${r.lost ? `disconnected from ${url}: ${r.reason}, reconnecting` : `waiting for broker ${url}: ${r.reason}`}, attempt ${r.attempt}, next in ${next}`;
}
