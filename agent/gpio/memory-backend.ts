/**
 * The `fake` GPIO backend (`gpio.backend: "fake"`, docs/AGENT.md): no
 * hardware, every pin is a level held in memory. For running the agent where
 * there is no header (a laptop, the demo); nothing is driven or read on the
 * board. Tests extend it (test/helpers/fake-gpio.ts) to record writes, inject
 * failures and press the reset button.
 */
import type { GpioBackend, InputLine, InputOptions, OutputLine } from './backend.js';
import { GpioError } from './errors.js';

export interface MemoryGpioOptions {
  /** Lines on the in-memory header chip (default 54, like pinctrl-bcm2835 / pinctrl-rp1). */
  ngpio?: number;
}

interface MemoryInput {
  options: InputOptions;
  level: boolean;
}

export class MemoryGpioBackend implements GpioBackend {
  readonly name = 'fake';
  readonly #ngpio: number;
  readonly #outputs = new Map<number, boolean>();
  readonly #inputs = new Map<number, MemoryInput>();
  /** Logical input levels (true = active), kept while the pin is not open too. */
  readonly #levels = new Map<number, boolean>();
  #closed = false;

  constructor(options: MemoryGpioOptions = {}) {
    this.#ngpio = options.ngpio ?? 54;
  }

  async openOutput(pin: number, initial: boolean): Promise<OutputLine> {
    this.checkOpenable(pin);
    this.#outputs.set(pin, initial);
    this.written(pin, initial);
    return {
      pin,
      description: `BCM ${pin} (fake)`,
      write: (on: boolean) => {
        this.beforeWrite(pin);
        if (!this.#outputs.has(pin)) throw new Error(`fake GPIO ${pin} is not exported`);
        this.#outputs.set(pin, on);
        this.written(pin, on);
      },
      read: () => {
        const value = this.#outputs.get(pin);
        if (value === undefined) throw new Error(`fake GPIO ${pin} is not exported`);
        return value;
      },
      release: async () => {
        this.#outputs.delete(pin);
      },
    };
  }

  async openInput(pin: number, options: InputOptions): Promise<InputLine> {
    this.checkOpenable(pin);
    this.#inputs.set(pin, { options, level: this.#levels.get(pin) ?? false });
    return {
      pin,
      description: `BCM ${pin} (fake)`,
      read: () => {
        const input = this.#inputs.get(pin);
        if (input === undefined) throw new Error(`fake GPIO ${pin} is not exported`);
        return input.level;
      },
      release: async () => {
        this.#inputs.delete(pin);
      },
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  /** Current level of an open output, or undefined when the pin is not open as an output. */
  value(pin: number): boolean | undefined {
    return this.#outputs.get(pin);
  }

  isOpen(pin: number): boolean {
    return this.#outputs.has(pin) || this.#inputs.has(pin);
  }

  /** Pins currently open (outputs and inputs), sorted. */
  openPins(): number[] {
    return [...this.#outputs.keys(), ...this.#inputs.keys()].sort((a, b) => a - b);
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  /** Sets an input's logical level; fires its onChange when it is watched and the level changed. */
  protected setInput(pin: number, level: boolean): void {
    this.#levels.set(pin, level);
    const input = this.#inputs.get(pin);
    if (input === undefined || input.level === level) return;
    input.level = level;
    input.options.onChange(level);
  }

  /** Refuses a pin that is not a line of the chip or is open already (EBUSY). */
  private checkOpenable(pin: number): void {
    if (!Number.isInteger(pin) || pin < 0 || pin >= this.#ngpio) {
      throw new GpioError('E_GPIO_PIN_RANGE', `GPIO ${pin} is not a line of the fake chip (lines 0-${this.#ngpio - 1})`, {
        pin,
      });
    }
    this.beforeOpen(pin);
    if (this.isOpen(pin)) throw new Error(`fake GPIO ${pin} is already exported (EBUSY)`);
  }

  /** Before a line of the chip is opened (a subclass may throw, as a busy line would). */
  protected beforeOpen(_pin: number): void {}

  /** Before a write to an open output (a subclass may throw, as a failing line would). */
  protected beforeWrite(_pin: number): void {}

  /** After an output was set (opened or written). */
  protected written(_pin: number, _value: boolean): void {}
}
