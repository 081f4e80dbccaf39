/**
 * BoardIo: the status LED, the sensor-enable pin and the reset button on top
 * of one GpioBackend (or none). Nothing here throws into provisioning: every
 * GPIO failure is logged, delivered to onError handlers and shown by check().
 *
 * Timers: one unref'd LED pattern timer per BoardIo (none for a steady
 * level), plus a hold timer only while the reset button is down.
 */
import { resolve } from 'node:path';
import type { GpioBackend, InputLine, OutputLine } from './backend.js';
import { GpioError, toGpioError } from './errors.js';
import { silentLogger } from '../../lib/log.js';
import { MemoryGpioBackend } from './memory-backend.js';
import { BOARD_STATUSES, LED_PATTERNS, type BoardStatus, type LedStep } from './led-patterns.js';
import { OnoffBackend, loadOnoff, type OnoffModule } from './onoff-backend.js';
import { DEFAULT_RESET_HOLD_S, resetHoldProblem, sanitizePins } from './pins.js';
import { ResetHoldDetector } from './reset-hold.js';
import { DEFAULT_SYSFS_ROOT, HEADER_CHIP_LABELS, findHeaderChip } from './sysfs-resolver.js';
import { realTimers, type TimerHandle, type Timers } from './timers.js';
import { GPIO_ROLES, type BoardIo, type GpioConfig, type GpioLog, type GpioPins, type GpioRole } from './types.js';

export interface BoardIoOptions {
  /** Use this backend instead of the one named by config.backend (tests: a FakeGpioBackend). */
  backend?: GpioBackend;
  /** Clock for LED patterns and the reset hold (default: real, unref'd timers). */
  timers?: Timers;
  /** onoff module to use instead of importing it (tests). */
  onoff?: OnoffModule;
  /** Header gpiochip labels, best first (default HEADER_CHIP_LABELS). */
  chipLabels?: readonly string[];
}

const DEFAULT_DEBOUNCE_MS = 50;
const MAX_PENDING_ERRORS = 20;

type ProblemKey = GpioRole | 'backend' | 'config';

interface NoBackend {
  /** Why there is no backend. */
  reason: string;
  /** gpio.backend was 'none': running without GPIO is intended. */
  intended: boolean;
}

interface BoardIoSettings {
  pins: GpioPins;
  holdMs: number;
  activeLow: boolean;
  debounceMs: number;
}

class BoardIoImpl implements BoardIo {
  readonly backend: string;

  private pins: GpioPins;
  private led: OutputLine | null = null;
  private sensor: OutputLine | null = null;
  private button: InputLine | null = null;
  private detector: ResetHoldDetector | null = null;
  private status: BoardStatus | null = null;
  private sensorOn = false;
  private patternTimer: TimerHandle | null = null;
  private ledFailing = false;
  private closed = false;
  private queue: Promise<void> = Promise.resolve();
  private readonly problems = new Map<ProblemKey, GpioError>();
  private readonly errorHandlers: ((err: Error) => void)[] = [];
  private readonly resetHandlers: (() => void)[] = [];
  private pendingErrors: GpioError[] = [];

  constructor(
    private readonly driver: GpioBackend | null,
    private readonly noBackend: NoBackend | null,
    private readonly settings: BoardIoSettings,
    private readonly timers: Timers,
    private readonly log: GpioLog,
  ) {
    this.backend = driver?.name ?? 'none';
    this.pins = { ...settings.pins };
  }

  /** Opens the configured pins (failures reported, never thrown). */
  start(): Promise<void> {
    return this.enqueue(async () => {
      for (const role of GPIO_ROLES) await this.openRole(role);
    });
  }

  /** Records a problem found before start (config, backend) and reports it. */
  addProblem(key: ProblemKey, err: GpioError, level: 'warn' | 'error' = 'error'): void {
    this.problems.set(key, err);
    this.report(err, level);
  }

  setStatus(status: BoardStatus): void {
    if (!BOARD_STATUSES.includes(status)) {
      this.report(new GpioError('E_GPIO_CONFIG', `unknown board status ${JSON.stringify(status)}`));
      return;
    }
    if (this.closed || status === this.status) return;
    this.status = status;
    this.applyStatus();
  }

  setSensorEnabled(on: boolean): Promise<void> {
    this.sensorOn = on;
    return this.enqueue(async () => {
      if (!this.closed) this.writeSensor(on);
    });
  }

  onResetHeld(handler: () => void): void {
    this.resetHandlers.push(handler);
  }

  onError(handler: (err: Error) => void): void {
    this.errorHandlers.push(handler);
    if (this.pendingErrors.length === 0) return;
    const pending = this.pendingErrors;
    this.pendingErrors = [];
    queueMicrotask(() => {
      for (const err of pending) this.deliver(err);
    });
  }

  reconfigure(pins: { status_led?: number | null; sensor_enable?: number | null; reset_button?: number | null }): Promise<void> {
    const merged: Partial<Record<GpioRole, unknown>> = { ...this.pins };
    for (const role of GPIO_ROLES) if (pins[role] !== undefined) merged[role] = pins[role];
    const { pins: next, problems } = sanitizePins(merged);
    const first = problems[0];
    if (first !== undefined) return Promise.reject(first.error);
    return this.enqueue(async () => {
      if (this.closed) return;
      for (const role of GPIO_ROLES) {
        const changed = next[role] !== this.pins[role];
        const retry = pins[role] !== undefined && next[role] !== null && this.problems.has(role);
        if (!changed && !retry) continue;
        await this.releaseRole(role);
        this.problems.delete(role);
        this.pins[role] = next[role];
        await this.openRole(role);
      }
    });
  }

  async check(): Promise<{ ok: boolean; detail: string }> {
    await this.queue;
    if (this.closed) return { ok: false, detail: 'GPIO closed' };
    const configured = GPIO_ROLES.filter((r) => this.pins[r] !== null).map((r) => `${r} ${String(this.pins[r])}`);
    const configProblem = this.problems.get('config');
    const configNote = configProblem === undefined ? '' : `; config: ${configProblem.message}`;
    if (this.driver === null) {
      const reason = this.noBackend?.reason ?? 'no backend';
      if (this.noBackend?.intended === true) {
        return { ok: configProblem === undefined, detail: `backend none: ${reason}${configNote}` };
      }
      const ok = configured.length === 0 && !this.problems.has('backend') && configProblem === undefined;
      const pinsNote = configured.length === 0 ? '' : `; configured pins not driven (${configured.join(', ')}); set gpio.backend to "none" to run without GPIO`;
      return { ok, detail: `no GPIO backend: ${reason}${pinsNote}${configNote}` };
    }
    let ok = configProblem === undefined;
    const parts = [`backend ${this.driver.name}`];
    for (const role of GPIO_ROLES) {
      const pin = this.pins[role];
      const line = role === 'status_led' ? this.led : role === 'sensor_enable' ? this.sensor : this.button;
      const problem = this.problems.get(role);
      if (problem !== undefined) {
        ok = false;
        parts.push(`${role} FAILED [${problem.code}] ${problem.message}`);
      } else if (pin === null || line === null) {
        parts.push(`${role} not wired`);
      } else {
        try {
          parts.push(`${role} ${line.description} ok (reads ${line.read() ? 1 : 0})`);
        } catch (err) {
          ok = false;
          parts.push(`${role} ${line.description} FAILED to read: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
    }
    return { ok, detail: parts.join('; ') + configNote };
  }

  close(): Promise<void> {
    if (this.closed) return this.queue;
    this.closed = true;
    this.stopPattern();
    return this.enqueue(async () => {
      for (const role of GPIO_ROLES) await this.releaseRole(role);
      try {
        await this.driver?.close();
      } catch (err) {
        this.log.warn(`gpio: closing backend failed: ${err instanceof Error ? err.message : String(err)}`);
      }
      this.pendingErrors = [];
    });
  }

  private enqueue(op: () => Promise<void>): Promise<void> {
    const run = this.queue.then(op, op);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async openRole(role: GpioRole): Promise<void> {
    const pin = this.pins[role];
    if (pin === null || this.driver === null || this.closed) return;
    try {
      if (role === 'reset_button') {
        await this.openButton(pin, this.driver);
      } else if (role === 'sensor_enable') {
        this.sensor = await this.driver.openOutput(pin, this.sensorOn);
        this.log.info(`gpio: sensor_enable ${this.sensor.description}`);
      } else {
        this.led = await this.driver.openOutput(pin, false);
        this.ledFailing = false;
        this.log.info(`gpio: status_led ${this.led.description}`);
        this.stopPattern();
        this.applyStatus();
      }
      this.problems.delete(role);
    } catch (err) {
      const e = toGpioError(err, 'E_GPIO_IO', `cannot open gpio.${role} (GPIO ${pin})`, pin);
      this.problems.set(role, e);
      this.report(e);
    }
  }

  private async openButton(pin: number, driver: GpioBackend): Promise<void> {
    const holdMs = this.settings.holdMs;
    const detector = new ResetHoldDetector(holdMs, this.timers, () => this.fireReset(holdMs));
    const line = await driver.openInput(pin, {
      activeLow: this.settings.activeLow,
      debounceMs: this.settings.debounceMs,
      onChange: (active) => detector.update(active),
      onError: (err) => this.report(toGpioError(err, 'E_GPIO_IO', `reset button GPIO ${pin}`, pin)),
    });
    let pressed = true;
    try {
      pressed = line.read();
    } catch (err) {
      this.report(toGpioError(err, 'E_GPIO_IO', `cannot read reset button GPIO ${pin}; ignored until it reads released`, pin));
    }
    if (!detector.start(pressed)) {
      this.log.warn(`gpio: reset button (GPIO ${pin}) reads pressed at start: ignored until released`);
    }
    this.button = line;
    this.detector = detector;
    this.log.info(`gpio: reset_button ${line.description}, hold ${holdMs / 1000} s`);
  }

  private async releaseRole(role: GpioRole): Promise<void> {
    if (role === 'status_led') {
      const line = this.led;
      this.led = null;
      this.stopPattern();
      if (line !== null) await this.releaseOutput(line);
    } else if (role === 'sensor_enable') {
      const line = this.sensor;
      this.sensor = null;
      if (line !== null) await this.releaseOutput(line);
    } else {
      const line = this.button;
      this.button = null;
      this.detector?.stop();
      this.detector = null;
      if (line !== null) await line.release();
    }
  }

  private async releaseOutput(line: OutputLine): Promise<void> {
    try {
      line.write(false);
    } catch {
      // Releasing anyway; the line reverts to an input on unexport.
    }
    await line.release();
  }

  private applyStatus(): void {
    this.stopPattern();
    if (this.led === null || this.status === null || this.closed) return;
    this.runStep(LED_PATTERNS[this.status], 0);
  }

  private runStep(steps: readonly LedStep[], index: number): void {
    const step = steps[index];
    if (step === undefined) return;
    this.writeLed(step.on);
    if (step.ms === undefined) return;
    this.patternTimer = this.timers.setTimeout(() => {
      this.patternTimer = null;
      this.runStep(steps, (index + 1) % steps.length);
    }, step.ms);
  }

  private stopPattern(): void {
    this.patternTimer?.cancel();
    this.patternTimer = null;
  }

  /** LED writes happen every few hundred ms: a failure is reported once, until a write succeeds again. */
  private writeLed(on: boolean): void {
    const line = this.led;
    if (line === null) return;
    try {
      line.write(on);
      if (this.ledFailing) {
        this.ledFailing = false;
        this.problems.delete('status_led');
        this.log.info(`gpio: status LED writes work again (${line.description})`);
      }
    } catch (err) {
      if (this.ledFailing) return;
      this.ledFailing = true;
      const e = toGpioError(err, 'E_GPIO_IO', `status LED write failed (${line.description})`, line.pin);
      this.problems.set('status_led', e);
      this.report(e);
    }
  }

  private writeSensor(on: boolean): void {
    const line = this.sensor;
    if (line === null) return;
    try {
      line.write(on);
      this.problems.delete('sensor_enable');
    } catch (err) {
      const e = toGpioError(err, 'E_GPIO_IO', `sensor-enable write failed (${line.description})`, line.pin);
      this.problems.set('sensor_enable', e);
      this.report(e);
    }
  }

  private fireReset(holdMs: number): void {
    if (this.closed) return;
    this.log.warn(`gpio: reset button held ${holdMs / 1000} s: reset to unprovisioned requested`);
    for (const handler of this.resetHandlers) {
      try {
        handler();
      } catch (err) {
        this.log.error(`gpio: reset handler failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  }

  private report(err: GpioError, level: 'warn' | 'error' = 'error'): void {
    this.log[level](`gpio: [${err.code}] ${err.message}`);
    if (this.errorHandlers.length === 0) {
      this.pendingErrors.push(err);
      if (this.pendingErrors.length > MAX_PENDING_ERRORS) this.pendingErrors.shift();
      return;
    }
    this.deliver(err);
  }

  private deliver(err: GpioError): void {
    for (const handler of this.errorHandlers) {
      try {
        handler(err);
      } catch (handlerErr) {
        this.log.error(`gpio: error handler failed: ${handlerErr instanceof Error ? handlerErr.message : String(handlerErr)}`);
      }
    }
  }
}

/**
 * The onoff backend as `run` opens it (no pin exported yet): loads onoff and its native epoll
 * addon, finds the header chip, checks /sys/class/gpio/export is writable. The self-test uses it
 * as is, so what fails here fails there too. Rejects with a GpioError.
 */
export async function openOnoff(root: string, options: BoardIoOptions = {}): Promise<OnoffBackend> {
  if (resolve(root) !== DEFAULT_SYSFS_ROOT) {
    throw new GpioError('E_GPIO_CONFIG', `onoff always drives ${DEFAULT_SYSFS_ROOT}; gpio.sysfs_root ${root} would resolve pins against another tree`);
  }
  const onoff = options.onoff ?? (await loadOnoff());
  const chip = await findHeaderChip({ root, labels: options.chipLabels ?? HEADER_CHIP_LABELS });
  return OnoffBackend.create(chip, onoff);
}

/**
 * Creates the board's GPIO. Never rejects: an unusable backend leaves a
 * BoardIo with backend 'none' whose check() says why.
 */
export async function createBoardIo(config: GpioConfig, log?: GpioLog, options: BoardIoOptions = {}): Promise<BoardIo> {
  const logger: GpioLog = log ?? silentLogger;
  const timers = options.timers ?? realTimers;
  const { pins, problems: pinProblems } = sanitizePins(config);
  const holdProblem = resetHoldProblem(config.reset_hold_s);
  const holdS = holdProblem === null ? (config.reset_hold_s ?? DEFAULT_RESET_HOLD_S) : DEFAULT_RESET_HOLD_S;
  const debounce = config.reset_debounce_ms;
  const settings: BoardIoSettings = {
    pins,
    holdMs: Math.round(holdS * 1000),
    activeLow: config.reset_active_low ?? true,
    debounceMs: typeof debounce === 'number' && Number.isInteger(debounce) && debounce >= 0 ? debounce : DEFAULT_DEBOUNCE_MS,
  };

  let driver: GpioBackend | null = null;
  let noBackend: NoBackend | null = null;
  let backendProblem: GpioError | null = null;
  const requested: unknown = config.backend ?? 'auto';
  if (options.backend !== undefined) {
    driver = options.backend;
  } else if (requested === 'fake') {
    driver = new MemoryGpioBackend();
  } else if (requested === 'none') {
    noBackend = { reason: 'GPIO disabled by configuration (gpio.backend "none")', intended: true };
  } else if (requested === 'onoff' || requested === 'auto') {
    try {
      driver = await openOnoff(config.sysfs_root ?? DEFAULT_SYSFS_ROOT, options);
    } catch (err) {
      const e = toGpioError(err, 'E_GPIO_BACKEND', 'onoff backend unavailable');
      noBackend = { reason: `${requested === 'auto' ? 'auto: ' : ''}${e.message}`, intended: false };
      if (requested === 'onoff') backendProblem = e;
    }
  } else {
    backendProblem = new GpioError('E_GPIO_CONFIG', `unknown gpio.backend ${JSON.stringify(requested)}`);
    noBackend = { reason: backendProblem.message, intended: false };
  }

  const io = new BoardIoImpl(driver, noBackend, settings, timers, logger);
  for (const p of pinProblems) io.addProblem(p.role, p.error);
  if (holdProblem !== null) io.addProblem('config', holdProblem);
  if (backendProblem !== null) io.addProblem('backend', backendProblem);
  else if (noBackend !== null && !noBackend.intended) {
    const anyPin = GPIO_ROLES.some((r) => pins[r] !== null);
    logger[anyPin ? 'warn' : 'info'](`gpio: running without GPIO: ${noBackend.reason}`);
  }
  if (driver !== null) logger.info(`gpio: backend ${driver.name}`);
  await io.start();
  return io;
}
