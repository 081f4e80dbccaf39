/**
 * In-memory GPIO backend for tests and the demo: records every write with a
 * timestamp and lets a test press and release a button. Its clock is injected
 * (BoardIo passes its Timers' `now`), so with ManualTimers every timestamp is
 * virtual and deterministic.
 */
import type { GpioBackend, InputLine, InputOptions, OutputLine } from './backend.js';
import { GpioError } from './errors.js';

export interface FakeWrite {
  readonly pin: number;
  readonly value: boolean;
  readonly at: number;
}

export interface FakeGpioOptions {
  /** Clock for write timestamps (default Date.now). */
  now?: () => number;
  /** Lines on the fake header chip (default 54, like pinctrl-bcm2835 / pinctrl-rp1). */
  ngpio?: number;
}

interface FakeInput {
  options: InputOptions;
  level: boolean;
}

export class FakeGpioBackend implements GpioBackend {
  readonly name = 'fake';
  /** Every write to an output, in order. */
  readonly writes: FakeWrite[] = [];
  private now: () => number;
  private readonly ngpio: number;
  private readonly outputs = new Map<number, boolean>();
  private readonly inputs = new Map<number, FakeInput>();
  /** Logical button levels (true = pressed), kept while the pin is not open too. */
  private readonly levels = new Map<number, boolean>();
  private readonly writeFailures = new Map<number, Error>();
  private readonly openFailures = new Map<number, Error>();
  private closed = false;

  constructor(options: FakeGpioOptions = {}) {
    this.now = options.now ?? Date.now;
    this.ngpio = options.ngpio ?? 54;
  }

  /** Replaces the clock (BoardIo gives a fake it did not create its own clock through this). */
  useClock(now: () => number): void {
    this.now = now;
  }

  async openOutput(pin: number, initial: boolean): Promise<OutputLine> {
    this.checkOpenable(pin);
    this.outputs.set(pin, initial);
    this.record(pin, initial);
    return {
      pin,
      description: `BCM ${pin} (fake)`,
      write: (on: boolean) => {
        const failure = this.writeFailures.get(pin);
        if (failure !== undefined) throw failure;
        if (!this.outputs.has(pin)) throw new Error(`fake GPIO ${pin} is not exported`);
        this.outputs.set(pin, on);
        this.record(pin, on);
      },
      read: () => {
        const value = this.outputs.get(pin);
        if (value === undefined) throw new Error(`fake GPIO ${pin} is not exported`);
        return value;
      },
      release: async () => {
        this.outputs.delete(pin);
      },
    };
  }

  async openInput(pin: number, options: InputOptions): Promise<InputLine> {
    this.checkOpenable(pin);
    this.inputs.set(pin, { options, level: this.levels.get(pin) ?? false });
    return {
      pin,
      description: `BCM ${pin} (fake)`,
      read: () => {
        const input = this.inputs.get(pin);
        if (input === undefined) throw new Error(`fake GPIO ${pin} is not exported`);
        return input.level;
      },
      release: async () => {
        this.inputs.delete(pin);
      },
    };
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** Presses the button on `pin` (logical level active); fires onChange if the pin is watched. */
  press(pin: number): void {
    this.setInput(pin, true);
  }

  release(pin: number): void {
    this.setInput(pin, false);
  }

  /** Current level of an open output, or undefined when the pin is not open as an output. */
  value(pin: number): boolean | undefined {
    return this.outputs.get(pin);
  }

  isOpen(pin: number): boolean {
    return this.outputs.has(pin) || this.inputs.has(pin);
  }

  /** Pins currently open (outputs and inputs), sorted. */
  openPins(): number[] {
    return [...this.outputs.keys(), ...this.inputs.keys()].sort((a, b) => a - b);
  }

  writesFor(pin: number): FakeWrite[] {
    return this.writes.filter((w) => w.pin === pin);
  }

  /** Makes every later write to `pin` throw `err` (null: stop failing). */
  failWrites(pin: number, err: Error | null): void {
    if (err === null) this.writeFailures.delete(pin);
    else this.writeFailures.set(pin, err);
  }

  /** Makes opening `pin` fail with `err` (null: stop failing), like an EBUSY export. */
  failOpen(pin: number, err: Error | null): void {
    if (err === null) this.openFailures.delete(pin);
    else this.openFailures.set(pin, err);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private checkOpenable(pin: number): void {
    if (!Number.isInteger(pin) || pin < 0 || pin >= this.ngpio) {
      throw new GpioError('E_GPIO_PIN_RANGE', `GPIO ${pin} is not a line of the fake chip (lines 0-${this.ngpio - 1})`, {
        pin,
      });
    }
    const failure = this.openFailures.get(pin);
    if (failure !== undefined) throw failure;
    if (this.isOpen(pin)) throw new Error(`fake GPIO ${pin} is already exported (EBUSY)`);
  }

  private record(pin: number, value: boolean): void {
    this.writes.push({ pin, value, at: this.now() });
  }

  private setInput(pin: number, level: boolean): void {
    this.levels.set(pin, level);
    const input = this.inputs.get(pin);
    if (input === undefined || input.level === level) return;
    input.level = level;
    input.options.onChange(level);
  }
}
