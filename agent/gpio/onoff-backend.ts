/**
 * sysfs backend on onoff (an optionalDependency). onoff requires its native
 * `epoll` addon at import time, which may not build on every machine, so it is
 * loaded lazily with a dynamic import and its absence is a reported condition,
 * not a crash. onoff's `Gpio` takes the global sysfs number and always works
 * under /sys/class/gpio, so BCM pins are resolved through the header gpiochip
 * (see sysfs-resolver.ts) of that same root.
 *
 * Inputs are watched on both edges with onoff's `debounceTimeout`. sysfs
 * cannot set pull resistors: a button to ground needs a pull-up, from the
 * board or from config.txt (`gpio=22=ip,pu`), because BCM 9-27 default to
 * pull-down on a Raspberry Pi.
 */
import type { GpioBackend, InputLine, InputOptions, OutputLine } from './backend.js';
import { GpioError, toGpioError } from './errors.js';
import { DEFAULT_SYSFS_ROOT, describeResolvedPin, resolveOnChip, type GpioChipInfo } from './sysfs-resolver.js';

type BinaryValue = 0 | 1;
type Direction = 'in' | 'out' | 'high' | 'low';
type Edge = 'none' | 'rising' | 'falling' | 'both';

/** The part of onoff's Gpio this backend uses (declared here so the build does not need onoff's types). */
export interface OnoffGpio {
  readSync(): BinaryValue;
  writeSync(value: BinaryValue): void;
  watch(callback: (err: Error | null | undefined, value: BinaryValue) => void): void;
  unwatchAll(): void;
  unexport(): void;
}

export interface OnoffGpioConstructor {
  new (gpio: number, direction: Direction, edge?: Edge, options?: { debounceTimeout?: number; activeLow?: boolean; reconfigureDirection?: boolean }): OnoffGpio;
  readonly accessible: boolean;
}

export interface OnoffModule {
  readonly Gpio: OnoffGpioConstructor;
}

/** Imports onoff, or rejects with E_GPIO_BACKEND saying why (typically the epoll addon is not built). */
export async function loadOnoff(specifier = 'onoff'): Promise<OnoffModule> {
  let mod: unknown;
  try {
    // A literal specifier for onoff itself, so that provisioning/build-agent's bundler includes
    // it (`as string` keeps tsc from requiring onoff's types; the emitted import is literal).
    mod = specifier === 'onoff' ? await import('onoff' as string) : await import(specifier);
  } catch (err) {
    throw toGpioError(err, 'E_GPIO_BACKEND', `cannot load ${specifier} (optional dependency with the native epoll addon)`);
  }
  const candidate = (mod as { Gpio?: unknown; default?: { Gpio?: unknown } } | null) ?? {};
  const Gpio = typeof candidate.Gpio === 'function' ? candidate.Gpio : candidate.default?.Gpio;
  if (typeof Gpio !== 'function') {
    throw new GpioError('E_GPIO_BACKEND', `${specifier} does not export a Gpio class`);
  }
  return { Gpio: Gpio as OnoffGpioConstructor };
}

export class OnoffBackend implements GpioBackend {
  readonly name = 'onoff';

  /** `chip` is the header chip found under /sys/class/gpio (the only root onoff drives). */
  constructor(
    private readonly onoff: OnoffModule,
    readonly chip: GpioChipInfo,
  ) {}

  /** Loads onoff, checks /sys/class/gpio/export is writable; rejects with a GpioError otherwise. */
  static async create(chip: GpioChipInfo, onoff?: OnoffModule): Promise<OnoffBackend> {
    const mod = onoff ?? (await loadOnoff());
    if (!mod.Gpio.accessible) {
      throw new GpioError('E_GPIO_UNAVAILABLE', `${DEFAULT_SYSFS_ROOT}/export is not writable: run the agent as a member of the gpio group`);
    }
    return new OnoffBackend(mod, chip);
  }

  async openOutput(pin: number, initial: boolean): Promise<OutputLine> {
    const resolved = resolveOnChip(this.chip, pin);
    let gpio: OnoffGpio;
    try {
      // 'high'/'low' set direction and level in one write: no glitch on the pin.
      gpio = new this.onoff.Gpio(resolved.sysfs, initial ? 'high' : 'low');
    } catch (err) {
      throw toGpioError(err, 'E_GPIO_IO', `cannot export GPIO ${describeResolvedPin(resolved)} as an output`, pin);
    }
    return {
      pin,
      description: describeResolvedPin(resolved),
      write: (on: boolean) => gpio.writeSync(on ? 1 : 0),
      read: () => gpio.readSync() === 1,
      release: async () => {
        try {
          gpio.unexport();
        } catch {
          // Already closed: nothing more to release.
        }
      },
    };
  }

  async openInput(pin: number, options: InputOptions): Promise<InputLine> {
    const resolved = resolveOnChip(this.chip, pin);
    let gpio: OnoffGpio;
    try {
      gpio = new this.onoff.Gpio(resolved.sysfs, 'in', 'both', {
        debounceTimeout: options.debounceMs,
        activeLow: options.activeLow,
      });
      gpio.watch((err, value) => {
        if (err) options.onError(toGpioError(err, 'E_GPIO_IO', `watching GPIO ${describeResolvedPin(resolved)} failed`, pin));
        else options.onChange(value === 1);
      });
    } catch (err) {
      throw toGpioError(err, 'E_GPIO_IO', `cannot export GPIO ${describeResolvedPin(resolved)} as an input`, pin);
    }
    return {
      pin,
      description: describeResolvedPin(resolved),
      read: () => gpio.readSync() === 1,
      release: async () => {
        try {
          gpio.unwatchAll();
          gpio.unexport();
        } catch {
          // Already closed.
        }
      },
    };
  }

  async close(): Promise<void> {
    // Lines are released one by one by BoardIo; onoff holds nothing else.
  }
}
