/**
 * The GPIO backend of the tests: the agent's in-memory `fake` backend
 * (agent/gpio/memory-backend.ts) that also records every write with a
 * timestamp, fails writes or opens on demand and presses and releases a
 * button. Its clock is injected, so with ManualTimers every timestamp is
 * virtual and deterministic. Injected with `createBoardIo(..., { backend })`
 * or `startAgent({ gpioBackend })`.
 */
import type { StartAgentOptions } from '../../agent/agent.js';
import { MemoryGpioBackend, type MemoryGpioOptions } from '../../agent/gpio/memory-backend.js';

export interface FakeWrite {
  readonly pin: number;
  readonly value: boolean;
  readonly at: number;
}

export interface FakeGpioOptions extends MemoryGpioOptions {
  /** Clock for write timestamps (default Date.now). */
  now?: () => number;
}

export class FakeGpioBackend extends MemoryGpioBackend {
  /** Every write to an output, in order. */
  readonly writes: FakeWrite[] = [];
  private now: () => number;
  private readonly writeFailures = new Map<number, Error>();
  private readonly openFailures = new Map<number, Error>();

  constructor(options: FakeGpioOptions = {}) {
    super(options);
    this.now = options.now ?? Date.now;
  }

  /** Replaces the clock (e.g. with the ManualTimers' `now` of the BoardIo it is given to). */
  useClock(now: () => number): void {
    this.now = now;
  }

  /** Presses the button on `pin` (logical level active); fires onChange if the pin is watched. */
  press(pin: number): void {
    this.setInput(pin, true);
  }

  release(pin: number): void {
    this.setInput(pin, false);
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

  protected override beforeOpen(pin: number): void {
    const failure = this.openFailures.get(pin);
    if (failure !== undefined) throw failure;
  }

  protected override beforeWrite(pin: number): void {
    const failure = this.writeFailures.get(pin);
    if (failure !== undefined) throw failure;
  }

  protected override written(pin: number, value: boolean): void {
    this.writes.push({ pin, value, at: this.now() });
  }
}

const injected = new WeakMap<object, FakeGpioBackend>();

/** Starts an agent through `start` (startAgent, a suite's helper) with a FakeGpioBackend injected; `fakeGpio(agent)` returns it. */
export async function startWithFakeGpio<T extends object>(options: StartAgentOptions, start: (options: StartAgentOptions) => Promise<T>): Promise<T> {
  const gpio = new FakeGpioBackend();
  const agent = await start({ ...options, gpioBackend: gpio });
  injected.set(agent, gpio);
  return agent;
}

/** The FakeGpioBackend an agent started by startWithFakeGpio drives. */
export function fakeGpio(agent: object | undefined): FakeGpioBackend {
  const gpio = agent === undefined ? undefined : injected.get(agent);
  if (gpio === undefined) throw new Error('this agent was not started by startWithFakeGpio');
  return gpio;
}
