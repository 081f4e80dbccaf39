/**
 * Validation of the GPIO part of a configuration, independent of hardware:
 * pins are BCM numbers from 0 to GPIO_PIN_MAX (or null) and no pin serves two roles. The
 * range on the actual chip is checked when a pin is opened (E_GPIO_PIN_RANGE).
 */
import { GPIO_PIN_MAX, isGpioPin } from '../../protocol/gpio-pins.js';
import { GpioError } from './errors.js';
import { GPIO_ROLES, type GpioPins, type GpioRole } from './types.js';

export const DEFAULT_RESET_HOLD_S = 5;
export const MAX_RESET_HOLD_S = 600;

function pinProblem(role: GpioRole, value: unknown): GpioError | null {
  if (value === null || value === undefined) return null;
  if (!isGpioPin(value)) {
    return new GpioError('E_GPIO_CONFIG', `gpio.${role} must be a BCM GPIO number (integer from 0 to ${GPIO_PIN_MAX}) or null, got ${JSON.stringify(value)}`);
  }
  return null;
}

export interface PinProblem {
  readonly role: GpioRole;
  readonly error: GpioError;
}

/** Pins as given, with each invalid or duplicated pin set to null and its problem listed. */
export function sanitizePins(pins: Partial<Record<GpioRole, unknown>>): { pins: GpioPins; problems: PinProblem[] } {
  const out: GpioPins = { status_led: null, sensor_enable: null, reset_button: null };
  const problems: PinProblem[] = [];
  const owner = new Map<number, GpioRole>();
  for (const role of GPIO_ROLES) {
    const value = pins[role];
    const problem = pinProblem(role, value);
    if (problem !== null) {
      problems.push({ role, error: problem });
      continue;
    }
    if (typeof value !== 'number') continue;
    const other = owner.get(value);
    if (other !== undefined) {
      const error = new GpioError('E_GPIO_CONFIG', `gpio.${role} and gpio.${other} are both GPIO ${value}`, { pin: value });
      problems.push({ role, error });
      continue;
    }
    owner.set(value, role);
    out[role] = value;
  }
  return { pins: out, problems };
}

/** Throws the first problem of a pin set (E_GPIO_CONFIG). */
export function validateGpioPins(pins: Partial<Record<GpioRole, unknown>>): GpioPins {
  const { pins: clean, problems } = sanitizePins(pins);
  const first = problems[0];
  if (first !== undefined) throw first.error;
  return clean;
}

export function resetHoldProblem(value: unknown): GpioError | null {
  if (value === undefined) return null;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || value > MAX_RESET_HOLD_S) {
    return new GpioError('E_GPIO_CONFIG', `gpio.reset_hold_s must be a number of seconds in (0, ${MAX_RESET_HOLD_S}], got ${JSON.stringify(value)}`);
  }
  return null;
}
