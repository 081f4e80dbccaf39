/**
 * The one small interface every GPIO backend implements. Pins are BCM numbers
 * (line offsets on the 40-pin header chip): each backend maps them to its own
 * addressing (onoff: the sysfs number base + offset).
 *
 * Backends today: onoff (sysfs), fake (tests, demo), and none (no backend at
 * all: BoardIo simply has no lines). Planned: a character-device backend
 * (/dev/gpiochipN via libgpiod v2 or the GPIO v2 ioctls) for kernels built
 * without CONFIG_GPIO_SYSFS. It fits this interface unchanged: the header chip
 * is found by the same labels (pinctrl-rp1 on Pi 5), lines are requested by
 * offset (= BCM number), with bias (pull-up) and debounce set per request
 * instead of in config.txt, and released by closing the request fd.
 */
export interface OutputLine {
  readonly pin: number;
  /** Human-readable addressing, e.g. "BCM 17 = sysfs 529 (gpiochip512 pinctrl-bcm2711)". */
  readonly description: string;
  /** Drives the line: true = high (active). Synchronous; throws on failure. */
  write(on: boolean): void;
  /** Reads the line back (used by the self-test). Throws on failure. */
  read(): boolean;
  /** Releases the line (sysfs: unexport). Never throws. */
  release(): Promise<void>;
}

export interface InputLine {
  readonly pin: number;
  readonly description: string;
  /** Logical level: true = active (pressed), after active-low inversion. Throws on failure. */
  read(): boolean;
  release(): Promise<void>;
}

export interface InputOptions {
  /** Active-low (button to ground with a pull-up): pressed reads as true. */
  activeLow: boolean;
  /** Edge debounce in milliseconds. */
  debounceMs: number;
  /** Called with the logical level on every (debounced) change. */
  onChange(active: boolean): void;
  /** Called when watching the line fails. */
  onError(err: Error): void;
}

export interface GpioBackend {
  readonly name: string;
  /** Claims a pin as an output driven to `initial`. Rejects with a GpioError. */
  openOutput(pin: number, initial: boolean): Promise<OutputLine>;
  /** Claims a pin as an input watched on both edges. Rejects with a GpioError. */
  openInput(pin: number, options: InputOptions): Promise<InputLine>;
  /** Releases whatever the backend holds beyond its lines. Never throws. */
  close(): Promise<void>;
}
