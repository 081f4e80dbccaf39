/**
 * Public shapes of the GPIO module (the `gpio` section of the agent config
 * and the BoardIo the agent drives). See index.ts for the entry points.
 */
import type { Logger } from '../../lib/log.js';
import type { BoardStatus } from './led-patterns.js';

export type GpioBackendName = 'auto' | 'onoff' | 'fake' | 'none';

export interface GpioConfig {
  /**
   * auto (default): onoff when it loads and /sys/class/gpio has a header chip,
   * else none (reason logged, check() not ok while pins are configured);
   * onoff: the same, but a failure is reported as an error;
   * fake: in-memory backend (tests, demo); none: no GPIO at all.
   */
  backend?: GpioBackendName;
  /** Root of the sysfs GPIO class (default /sys/class/gpio); onoff only drives the default root. */
  sysfs_root?: string;
  /** BCM numbers; null or absent = not wired. */
  status_led?: number | null;
  sensor_enable?: number | null;
  reset_button?: number | null;
  /** Seconds the reset button must be held (default 5). */
  reset_hold_s?: number;
  /** Not in the config-file contract (yet): button to ground with pull-up = true (default). */
  reset_active_low?: boolean;
  /** Not in the config-file contract (yet): button debounce in ms (default 50). */
  reset_debounce_ms?: number;
}

export interface GpioPins {
  status_led: number | null;
  sensor_enable: number | null;
  reset_button: number | null;
}

export type GpioRole = keyof GpioPins;

export const GPIO_ROLES: readonly GpioRole[] = ['status_led', 'sensor_enable', 'reset_button'];

export interface BoardIo {
  /** 'onoff' | 'fake' | 'none' (or the name of an injected backend). */
  readonly backend: string;
  /** LED pattern; setting the current status again keeps the pattern's phase. Never throws. */
  setStatus(status: BoardStatus): void;
  /** Drives the sensor-enable pin (high = on). Never throws: failures go to onError. */
  setSensorEnabled(on: boolean): Promise<void>;
  /** Called once per press held reset_hold_s seconds (default 5). */
  onResetHeld(handler: () => void): void;
  /** GPIO failures; those raised before the first handler is registered are delivered to it (latest 20). */
  onError(handler: (err: Error) => void): void;
  /**
   * Moves pins (absent key = unchanged, null = release). Rejects with a GpioError
   * E_GPIO_CONFIG only for an invalid set (bad number, pin used twice); hardware
   * failures are reported through onError and check(). Re-asking for a pin that
   * failed retries it.
   */
  reconfigure(pins: { status_led?: number | null; sensor_enable?: number | null; reset_button?: number | null }): Promise<void>;
  /** For the on-device self-test: backend, each pin resolved and readable. */
  check(): Promise<{ ok: boolean; detail: string }>;
  /** Stops timers, LED off, sensor-enable low, releases (unexports) every pin. Idempotent. */
  close(): Promise<void>;
}

/** What the GPIO layer logs with: the agent's logger (lib/log.ts). */
export type GpioLog = Pick<Logger, 'info' | 'warn' | 'error'>;
