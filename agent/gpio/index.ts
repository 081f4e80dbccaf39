/**
 * The agent's GPIO: status LED, sensor-enable pin, reset button.
 *
 *   const io = await createBoardIo(config.gpio, log);
 *   io.onError((err) => ...);          // never fatal to provisioning
 *   io.onResetHeld(() => ...);         // physical presence: reset to unprovisioned
 *   io.setStatus('enrolling');
 *   await io.setSensorEnabled(true);   // while provisioned
 *
 * Backends: onoff (sysfs, optional dependency loaded lazily), fake (no
 * hardware: pins held in memory, e.g. the demo; tests inject their own
 * recording backend with `createBoardIo(config, log, { backend })`), none.
 * A libgpiod / GPIO character-device backend is the planned next one (see backend.ts).
 */
export type { BoardIo, GpioBackendName, GpioConfig, GpioLog, GpioPins, GpioRole } from './types.js';
export { GPIO_ROLES } from './types.js';
export type { BoardStatus, LedStep } from './led-patterns.js';
export { BOARD_STATUSES, LED_PATTERNS } from './led-patterns.js';
export { createBoardIo, openOnoff, type BoardIoOptions } from './board-io.js';
export { MemoryGpioBackend, type MemoryGpioOptions } from './memory-backend.js';
export type { GpioBackend, InputLine, InputOptions, OutputLine } from './backend.js';
export { GPIO_ERROR_CODES, GpioError, isGpioError, type GpioErrorCode } from './errors.js';
export { DEFAULT_RESET_HOLD_S, resetHoldProblem, validateGpioPins } from './pins.js';
export {
  DEFAULT_SYSFS_ROOT,
  HEADER_CHIP_LABELS,
  findHeaderChip,
  readGpioChips,
  resolveSysfsGpio,
  type GpioChipInfo,
  type ResolvedPin,
} from './sysfs-resolver.js';
export { OnoffBackend, loadOnoff, type OnoffModule } from './onoff-backend.js';
export { ManualTimers, realTimers, type TimerHandle, type Timers } from './timers.js';
