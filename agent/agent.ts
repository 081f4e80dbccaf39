/**
 * The agent, programmatically: `startAgent({ configPath })` loads and checks
 * everything, connects, and runs until `stop()` or a `delete` command.
 * `sensor-agent run` is a thin wrapper around it; tests and the server's
 * fleet simulation start many in one process (nothing here is global, and an
 * idle connected agent holds no timer besides mqtt.js's keepalive).
 *
 * Start-up decisions:
 * - keys and no state: waits for a `request` (keys made on the host);
 * - keys already used with a state file that is gone (key store marker
 *   `in-use.json`): never acted on again; with a token, new keys and
 *   enrollment; without, E_STATE_LOST (exit 2);
 * - no keys, enrollment token: generates keys and enrolls;
 * - not provisioned and a token: enrolls (generating keys if absent);
 * - decommissioned and a token: new keys (whatever keys are left) and a fresh
 *   state, then enrolls; keys that cannot be replaced (systemd credentials):
 *   E_KEYSTORE_READONLY (exit 2);
 * - no keys and no token: E_NOT_ENROLLED (exit 2), or exit 10 if decommissioned;
 * - decommissioned and no token: finishes the wipe if a crash interrupted it, exit 10.
 */
import { CodedError } from '../protocol/index.js';
import { EventEmitter } from 'node:events';
import { decommission, EXIT_DECOMMISSIONED, wipeDevice } from './actions/delete.js';
import type { ActionContext } from './actions/descriptor.js';
import { resumeRotation } from './actions/rotate.js';
import { applyGpioSettings, effectivePins, finishBrokerChange } from './actions/update.js';
import { clockStatus, toClockPolicy } from './system/clock.js';
import { loadConfig, type AgentConfig } from './config.js';
import { Enrollment, readEnrollmentToken, type EnrollmentOptions } from './net/enrollment.js';
import { createBoardIo, type BoardIo, type GpioBackend } from './gpio/index.js';
import { KeyStore } from './store/keystore.js';
import { isKeyStoreError } from './store/keystore-errors.js';
import { createLogger, type Logger } from '../lib/log.js';
import { MqttSession, type BackoffOptions, type RetryInfo } from './net/mqtt-session.js';
import { Pipeline, type CommandEvent, type FollowUp } from './actions/pipeline.js';
import { AgentRuntime } from './runtime.js';
import { IdleCollector } from './system/idle-gc.js';
import { initialState, stateLossAdvice, StateStore, type StateStoreOptions } from './store/state.js';
import { createSystemdNotifier, type SystemdNotifier } from './system/systemd-notify.js';
import { loadTrustAnchors } from './store/trust.js';

const CLOCK_RECHECK_MS = 30_000;
export const EXIT_OK = 0;
export { EXIT_DECOMMISSIONED };

/** A refusal to start (its exit status: agent/commands/exit-statuses.ts). */
export class AgentStartError extends CodedError {
  override readonly name = 'AgentStartError';
}

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
}

export interface AgentFaults extends StateStoreOptions {
  /** Called after a command's state is saved, before its PUBACK; throwing simulates a crash there. */
  afterPersist?: (action: string) => void | Promise<void>;
}

export async function startAgent(options: StartAgentOptions): Promise<RunningAgent> {
  const config = await loadConfig(options.configPath);
  const log = options.log ?? createLogger({ level: config.log_level });
  const agent = new Agent(config, log, options);
  await agent.init();
  return agent;
}

class Agent extends EventEmitter<AgentEvents> implements RunningAgent {
  readonly deviceId: string;
  readonly exited: Promise<number>;
  #resolveExit!: (status: number) => void;
  #rt!: AgentRuntime;
  #io!: BoardIo;
  #pipeline!: Pipeline;
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
  #resume: (() => Promise<void>) | undefined;
  /** A full GC once the agent is quiet after start-up or a command (agent/system/idle-gc.ts). */
  readonly #idleGc = new IdleCollector();

  constructor(
    private readonly config: AgentConfig,
    private readonly log: Logger,
    private readonly options: StartAgentOptions,
  ) {
    super();
    this.deviceId = config.device_id;
    this.exited = new Promise((r) => (this.#resolveExit = r));
  }

  get connected(): boolean {
    return this.#rt?.session?.ready === true;
  }

  async init(): Promise<void> {
    const { config, log } = this;
    const trust = await loadTrustAnchors(config.trust);
    const keystore = await KeyStore.open(config.keystore, { create: true, credentialsDir: process.env.CREDENTIALS_DIRECTORY });
    const store = await StateStore.open(config.state_dir, config.device_id, this.options.faults);
    const token = await readEnrollmentToken(config.enrollment_token);
    let st = store.state;

    if (st.decommissioned && token === undefined) {
      if (keystore.hasKeys() || keystore.previousEncryptionKey) await keystore.wipe();
      throw new AgentStartError('E_DECOMMISSIONED', `device ${config.device_id} was decommissioned by a delete command; to use it again, provision it at the board (place a new enrollment token at ${config.enrollment_token})`);
    }
    if (!keystore.hasKeys() && token === undefined) {
      throw new AgentStartError(
        'E_NOT_ENROLLED',
        `no device keys in ${config.keystore} and no enrollment token at ${config.enrollment_token}: this board is not enrolled. Create a bundle on the server (provision-server bundle --device ${config.device_id} ...) and copy its enroll.token to ${config.enrollment_token} (mode 0600), then start the agent again`);
    }
    // Keys already used with a state file that is now gone: the seq floor and the recent commands that
    // refuse replays went with it, so these keys are never acted on again (new keys via enrollment).
    const stateLost = keystore.hasKeys() && keystore.inUse && !store.found;
    if (stateLost && token === undefined) {
      throw new AgentStartError('E_STATE_LOST', `${store.path} is missing but the keys in ${config.keystore} were already used with it: without it, commands captured earlier could be replayed, so the agent will not use these keys. ${stateLossAdvice(store.path)}`);
    }
    const enrolling = token !== undefined && (!st.provisioned || !keystore.hasKeys() || stateLost);
    if (enrolling) {
      // A new identity (new keys, fresh state) when there are no keys, when the keys' state is gone, and
      // for a decommissioned board: its old keys can still be there (a power cut during delete after the
      // state save, before the wipe; keys from systemd credentials, which the wipe cannot remove). The
      // state is reset to seq 0, so the old keys must go with it: otherwise the broker's redelivery of an
      // un-acked delete, or any command captured under them, would apply again. Keeping the old keys with
      // their seq floor instead would refuse those, but also every command of a server that counts this
      // device's seq from 1 again; new keys are safe either way. Keys that cannot be replaced (systemd
      // credentials) are refused (E_KEYSTORE_READONLY, exit 2) before anything changes.
      const fresh = st.decommissioned || !keystore.hasKeys() || stateLost;
      if (fresh) {
        if (stateLost) log.warn('state file missing for keys already in use: replacing the keys and enrolling again', { state: store.path, keystore: config.keystore });
        else if (st.decommissioned && keystore.hasKeys()) log.warn('decommissioned board with a new enrollment token: replacing the keys left from before the decommissioning', { keystore: config.keystore });
        const keys = await keystore.generate({ force: true }).catch((err: unknown) => {
          if (isKeyStoreError(err) && err.code === 'E_KEYSTORE_READONLY') {
            throw new AgentStartError(err.code, `enrolling again needs new device keys (the old ones must never be used with a reset replay state), but ${err.message}`);
          }
          throw err;
        });
        log.info('device keys generated for enrollment', { kids: keys.keys.map((k) => k.kid).join(',') });
        // New identity: commands sealed to the old keys cannot open, and the server may count seq from 1 again.
        await store.save({ ...initialState(config.device_id), keys: { signing: keystore.signingKey?.kid ?? null, encryption: keystore.encryptionKey?.kid ?? null, previous_encryption: null } });
      }
    } else if (!st.provisioned) {
      log.warn('not provisioned and no enrollment token: waiting for a request command from the server');
    }
    if (keystore.hasKeys() && !keystore.inUse) {
      // The state file first, then the marker: a power cut in between leaves a state file and unmarked
      // keys, marked at the next start; never marked keys whose state was not written yet.
      if (!store.found) await store.save(store.state);
      await keystore.markInUse(config.device_id);
    }
    st = store.state;

    const clock = await clockStatus(config.clock.policy);
    log.info('clock', { trusted: clock.trusted, reason: clock.reason });
    this.#io = await createBoardIo(
      { ...config.gpio, ...effectivePins({ config } as AgentRuntime, st.settings) },
      (level, msg) => log[level](msg, { component: 'gpio' }),
      this.options.gpioBackend ? { backend: this.options.gpioBackend } : {},
    );
    this.#io.onError((err) => log.warn('GPIO problem', { reason: err.message }));

    const rt = new AgentRuntime(config, log, keystore, store, trust, this.#io, toClockPolicy(clock, config.clock.max_skew_s), (status, why) => {
      log.info('exiting', { status, reason: why });
      this.#exitStatus = status;
      void this.stop();
    });
    this.#rt = rt;
    if (!clock.trusted && config.clock.policy === 'auto') this.#watchClock(rt);
    rt.afterPersist = this.options.faults?.afterPersist;
    await rt.refreshDecryption();
    const resumedAck = await resumeRotation(rt);

    const update: ActionContext = { rt, onProvisioned: (userId) => this.#onProvisioned(userId), switchBroker: (b, ms) => this.#switchBroker(b, ms) };
    this.#pipeline = new Pipeline(update, (e) => this.emit('command', e));
    rt.session = new MqttSession({
      clientId: config.device_id,
      broker: await rt.effectiveBroker(),
      topic: rt.topics.command,
      log,
      onMessage: (topic, payload) => this.#onMessage(topic, payload),
      ...(this.options.backoff ? { backoff: this.options.backoff } : {}),
    });
    if (enrolling && token !== undefined) this.#enrollment = new Enrollment(rt, token, this.options.enrollment);

    this.#io.setStatus(st.provisioned ? 'provisioned' : enrolling ? 'enrolling' : 'unprovisioned');
    await this.#io.setSensorEnabled(st.provisioned && st.settings.sensor?.enabled !== false);
    this.#io.onResetHeld(() => void this.#resetToUnprovisioned());

    rt.session.on('subscribed', () => this.#onSubscribed());
    // `systemctl status` shows the last STATUS=: keep it true across broker outages.
    rt.session.on('retrying', (r) => this.#notifier?.status(waitingStatus(rt.session.broker.url, r)));
    if (this.options.systemdNotify) {
      this.#notifier = createSystemdNotifier(log);
      this.#notifier.startWatchdog(() => this.#healthy());
    }
    const pending = st.pending_broker;
    if (pending) {
      this.#resume = () => finishBrokerChange(rt, pending, update);
    }
    // The ack of a rotation completed just before a crash may never have left: send it (a duplicate is harmless).
    if (resumedAck) rt.publishAck(resumedAck.token, { ref: resumedAck.jti, status: 'applied', resumed: 'yes' });
    rt.session.start();
    // Ready now, not at the first subscription: a board that boots without its broker (no network
    // yet, DNS, TLS before the clock is set) must not time out its start and be given up on by
    // systemd. From here the agent waits for the broker itself, for as long as it takes.
    this.#notifier?.ready(`connecting to broker ${rt.session.broker.url}`);
    log.info('agent started', { device: config.device_id, provisioned: store.state.provisioned, enrolling, broker: rt.session.broker.url, gpio: this.#io.backend });
    if (this.#resume) {
      const resume = this.#resume;
      this.#resume = undefined;
      this.#follow = this.#follow.then(resume).catch((err: unknown) => log.error('broker change could not be resumed', { reason: (err as Error).message }));
    }
    this.#idleGc.poke();
  }

  #connectedStatus(): void {
    const url = this.#rt.session.broker.url;
    this.#notifier?.status(this.#enrollment ? `connected to ${url}, enrolling: waiting for the server's request` : `connected to ${url}`);
  }

  #onSubscribed(): void {
    this.#connectedStatus();
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
      if (this.#queued > 1) this.log.info('command received while another is processed: it waits for the command in progress');
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
          .catch((err: unknown) => this.log.error('after-ack work failed', { reason: (err as Error).message }))
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
    this.log.info('provisioned', { user: userId });
    this.emit('provisioned', userId);
  }

  async #switchBroker(stored: import('./store/state.js').StoredBroker | undefined, timeoutMs: number): Promise<boolean> {
    const rt = this.#rt;
    await rt.session.switchBroker(await rt.effectiveBroker(stored));
    if (timeoutMs <= 0) return true;
    return rt.session.waitReady(timeoutMs);
  }

  async #resetToUnprovisioned(): Promise<void> {
    const rt = this.#rt;
    this.log.warn('reset button held: resetting the board to unprovisioned');
    await rt.store.update((d) => decommission(d));
    await wipeDevice(rt);
    rt.requestExit(EXIT_DECOMMISSIONED, 'reset to unprovisioned at the board');
  }

  /** Healthy: not stuck on one command for longer than a hook could take, and the last state write worked. */
  #healthy(): boolean {
    if (this.#busySince !== 0 && Date.now() - this.#busySince > (this.config.hook_timeout_s + 60) * 1000) return false;
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
        rt.clock = toClockPolicy(c, this.config.clock.max_skew_s);
        clearInterval(this.#clockTimer);
        this.log.info('clock now synchronised: exp and iat are checked from here on', { reason: c.reason });
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
    await rt.session.drain();
    await Promise.race([this.#follow, new Promise((r) => setTimeout(r, 5000).unref())]);
    await rt.flushAcks(3000);
    await rt.session.stop();
    this.#notifier?.close();
    await this.#io.close().catch(() => undefined);
    this.log.info('agent stopped', { status: this.#exitStatus });
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
