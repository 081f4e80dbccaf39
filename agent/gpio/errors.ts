/**
 * Typed GPIO failures. Every failure has a stable code. GPIO failures are
 * reported (log + BoardIo.onError + check()), never fatal to provisioning:
 * only `validateGpioPins` / `BoardIo.reconfigure` reject, and only for a
 * configuration that is invalid in itself (bad pin number, pin used twice).
 */
import { CodedError } from '../../protocol/errors.js';

export const GPIO_ERROR_CODES = {
  E_GPIO_UNAVAILABLE: 'the sysfs GPIO interface is missing or not writable',
  E_GPIO_NO_CHIP: 'no gpiochip with a known 40-pin-header label was found',
  E_GPIO_PIN_RANGE: 'the pin is not a line of the header gpiochip',
  E_GPIO_BACKEND: 'the GPIO backend could not be loaded (onoff or its native epoll addon missing)',
  E_GPIO_CONFIG: 'invalid GPIO configuration',
  E_GPIO_IO: 'a GPIO export, read or write failed',
} as const;

export type GpioErrorCode = keyof typeof GPIO_ERROR_CODES;

export class GpioError extends CodedError<GpioErrorCode> {
  override readonly name = 'GpioError';
  /** The BCM pin concerned, when there is one. */
  readonly pin: number | undefined;

  constructor(code: GpioErrorCode, message: string, options?: { pin?: number; cause?: unknown }) {
    super(code, message, { cause: options?.cause, details: options?.pin === undefined ? undefined : { pin: options.pin } });
    this.pin = options?.pin;
  }
}

export function isGpioError(err: unknown): err is GpioError {
  return err instanceof GpioError;
}

/** Wraps anything thrown by a backend as a GpioError (kept as is when it already is one). */
export function toGpioError(err: unknown, code: GpioErrorCode, message: string, pin?: number): GpioError {
  if (err instanceof GpioError) return err;
  const reason = err instanceof Error ? err.message : String(err);
  return new GpioError(code, `${message}: ${reason}`, pin === undefined ? { cause: err } : { pin, cause: err });
}
