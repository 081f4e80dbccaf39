import { expect } from 'chai';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  GpioError,
  ManualTimers,
  createBoardIo,
  findHeaderChip,
  resetHoldProblem,
  validateGpioPins,
  type BoardIo,
  type GpioConfig,
  type GpioErrorCode,
} from '../../agent/gpio/index.js';
import { OnoffBackend, loadOnoff, type OnoffGpio, type OnoffModule } from '../../agent/gpio/onoff-backend.js';
import { FakeGpioBackend } from '../helpers/fake-gpio.js';
import { sinkLogger, type Logger } from '../../lib/log.js';

const PINS = { status_led: 17, sensor_enable: 27, reset_button: 22 } as const;

type LogLine = [level: string, msg: string];

function recorder(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  return { log: sinkLogger((level, msg) => lines.push([level, msg])), lines };
}

/** [virtual time, level] of the writes to `pin` from the `skip`-th on. */
function trace(fake: FakeGpioBackend, pin: number, skip = 0): [number, number][] {
  return fake
    .writesFor(pin)
    .slice(skip)
    .map((w) => [w.at, w.value ? 1 : 0]);
}

function expectCode(err: unknown, code: GpioErrorCode): GpioError {
  expect(err).to.be.instanceOf(GpioError);
  expect((err as GpioError).code, (err as Error).message).to.equal(code);
  return err as GpioError;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('agent/gpio BoardIo (fake backend)', () => {
  let timers: ManualTimers;
  let io: BoardIo;
  let fake: FakeGpioBackend;

  async function board(config: GpioConfig = {}, log?: Logger): Promise<void> {
    fake = new FakeGpioBackend({ now: () => timers.now() });
    io = await createBoardIo({ backend: 'fake', ...PINS, ...config }, log, { timers, backend: fake });
  }

  beforeEach(() => {
    timers = new ManualTimers(0);
  });

  afterEach(async () => {
    await io.close();
  });

  it("backend 'fake' (in memory, no hardware): outputs start low, the sensor pin follows, the self-test passes", async () => {
    io = await createBoardIo({ backend: 'fake', ...PINS }, undefined, { timers });
    expect(io.backend).to.equal('fake');
    await io.setSensorEnabled(true);
    expect(await io.check()).to.deep.include({ ok: true });
  });

  it('an injected FakeGpioBackend: outputs start low, nothing blinks before a status', async () => {
    await board();
    expect(io.backend).to.equal('fake');
    expect(fake.openPins()).to.deep.equal([17, 22, 27]);
    expect(fake.value(17)).to.equal(false);
    expect(fake.value(27)).to.equal(false);
    expect(timers.pending()).to.equal(0);
    expect(await io.check()).to.deep.include({ ok: true });
  });

  it('unprovisioned: slow blink, 1 s on / 1 s off', async () => {
    await board();
    io.setStatus('unprovisioned');
    timers.advance(4000);
    expect(trace(fake, 17, 1)).to.deep.equal([
      [0, 1],
      [1000, 0],
      [2000, 1],
      [3000, 0],
      [4000, 1],
    ]);
    expect(timers.pending()).to.equal(1);
  });

  it('enrolling: fast blink, 200 ms', async () => {
    await board();
    io.setStatus('enrolling');
    timers.advance(800);
    expect(trace(fake, 17, 1)).to.deep.equal([
      [0, 1],
      [200, 0],
      [400, 1],
      [600, 0],
      [800, 1],
    ]);
  });

  it('error: double blink, then 1 s dark', async () => {
    await board();
    io.setStatus('error');
    timers.advance(2200);
    expect(trace(fake, 17, 1)).to.deep.equal([
      [0, 1],
      [200, 0],
      [400, 1],
      [600, 0],
      [1600, 1],
      [1800, 0],
      [2000, 1],
      [2200, 0],
    ]);
  });

  it('provisioned: solid on, no timer left running; the same status again keeps the phase', async () => {
    await board();
    io.setStatus('enrolling');
    timers.advance(300);
    io.setStatus('enrolling');
    timers.advance(100);
    expect(trace(fake, 17, 1)).to.deep.equal([
      [0, 1],
      [200, 0],
      [400, 1],
    ]);
    io.setStatus('provisioned');
    expect(fake.value(17)).to.equal(true);
    expect(timers.pending()).to.equal(0);
    const writes = fake.writesFor(17).length;
    timers.advance(10_000);
    expect(fake.writesFor(17)).to.have.length(writes);
  });

  it('sensor-enable follows setSensorEnabled', async () => {
    await board();
    await io.setSensorEnabled(true);
    expect(fake.value(27)).to.equal(true);
    await io.setSensorEnabled(false);
    expect(fake.value(27)).to.equal(false);
    expect(trace(fake, 27)).to.deep.equal([
      [0, 0],
      [0, 1],
      [0, 0],
    ]);
  });

  it('reset button: fires once per press held reset_hold_s (default 5 s), not for a shorter press', async () => {
    await board();
    let resets = 0;
    io.onResetHeld(() => resets++);
    fake.press(22);
    timers.advance(4999);
    expect(resets).to.equal(0);
    timers.advance(1);
    expect(resets).to.equal(1);
    timers.advance(20_000);
    expect(resets).to.equal(1);
    fake.release(22);
    fake.press(22);
    timers.advance(3000);
    fake.release(22);
    timers.advance(10_000);
    expect(resets).to.equal(1);
    fake.press(22);
    timers.advance(5000);
    expect(resets).to.equal(2);
  });

  it('reset_hold_s is configurable', async () => {
    await board({ reset_hold_s: 2 });
    let resets = 0;
    io.onResetHeld(() => resets++);
    fake.press(22);
    timers.advance(1999);
    expect(resets).to.equal(0);
    timers.advance(1);
    expect(resets).to.equal(1);
  });

  it('a button already pressed at start is ignored until released', async () => {
    const own = new FakeGpioBackend({ now: () => timers.now() });
    own.press(22);
    const { log, lines } = recorder();
    io = await createBoardIo({ backend: 'onoff', ...PINS }, log, { backend: own, timers });
    expect(own.openPins()).to.deep.equal([17, 22, 27]);
    fake = own;
    let resets = 0;
    io.onResetHeld(() => resets++);
    timers.advance(60_000);
    expect(resets).to.equal(0);
    expect(lines.some(([level, msg]) => level === 'warn' && msg.includes('reads pressed at start'))).to.equal(true);
    own.release(22);
    own.press(22);
    timers.advance(5000);
    expect(resets).to.equal(1);
  });

  it('a failing LED write is reported once (not every blink), never thrown, and clears when writes work again', async () => {
    await board();
    const errors: Error[] = [];
    io.onError((err) => errors.push(err));
    io.setStatus('enrolling');
    fake.failWrites(17, new Error('EIO: i/o error, write'));
    timers.advance(2000);
    expect(errors).to.have.length(1);
    expect(expectCode(errors[0], 'E_GPIO_IO').pin).to.equal(17);
    const failing = await io.check();
    expect(failing.ok).to.equal(false);
    expect(failing.detail).to.include('status_led FAILED [E_GPIO_IO]');
    fake.failWrites(17, null);
    timers.advance(200);
    expect((await io.check()).ok).to.equal(true);
    expect(errors).to.have.length(1);
  });

  it('a failing sensor-enable write resolves and is reported', async () => {
    await board();
    const errors: Error[] = [];
    io.onError((err) => errors.push(err));
    fake.failWrites(27, new Error('EIO'));
    await io.setSensorEnabled(true);
    expect(expectCode(errors[0], 'E_GPIO_IO').pin).to.equal(27);
    expect((await io.check()).ok).to.equal(false);
  });

  it('startup failures (pin not on the chip, busy pin) are kept for the first onError handler; the other pins work', async () => {
    const own = new FakeGpioBackend({ now: () => timers.now() });
    own.failOpen(27, new Error('EBUSY: resource busy or locked, write'));
    io = await createBoardIo({ backend: 'fake', status_led: 60, sensor_enable: 27, reset_button: 22 }, undefined, { backend: own, timers });
    fake = own;
    const errors: Error[] = [];
    io.onError((err) => errors.push(err));
    await tick();
    expect(errors.map((e) => (e as GpioError).code)).to.deep.equal(['E_GPIO_PIN_RANGE', 'E_GPIO_IO']);
    expect(own.openPins()).to.deep.equal([22]);
    const check = await io.check();
    expect(check.ok).to.equal(false);
    expect(check.detail).to.include('status_led FAILED [E_GPIO_PIN_RANGE]');
    // Asking again for a pin that failed retries it.
    own.failOpen(27, null);
    await io.reconfigure({ status_led: 17, sensor_enable: 27 });
    expect(own.openPins()).to.deep.equal([17, 22, 27]);
    expect((await io.check()).ok).to.equal(true);
  });

  it('reconfigure moves pins live: old ones released low, the pattern and the sensor state carry over', async () => {
    await board();
    io.setStatus('enrolling');
    await io.setSensorEnabled(true);
    timers.advance(200);
    await io.reconfigure({ status_led: 5, sensor_enable: 6, reset_button: 23 });
    expect(fake.openPins()).to.deep.equal([5, 6, 23]);
    expect(fake.writesFor(17).at(-1)?.value).to.equal(false);
    expect(fake.writesFor(27).at(-1)?.value).to.equal(false);
    expect(fake.value(6)).to.equal(true);
    const before = fake.writesFor(5).length;
    timers.advance(400);
    expect(fake.writesFor(5).length).to.equal(before + 2);
    expect(timers.pending()).to.equal(1);

    let resets = 0;
    io.onResetHeld(() => resets++);
    fake.press(22);
    timers.advance(6000);
    expect(resets).to.equal(0);
    fake.press(23);
    timers.advance(5000);
    expect(resets).to.equal(1);

    await io.reconfigure({ sensor_enable: null });
    expect(fake.isOpen(6)).to.equal(false);
    expect(fake.writesFor(6).at(-1)?.value).to.equal(false);
  });

  it('reconfigure rejects an invalid pin set with E_GPIO_CONFIG and changes nothing', async () => {
    await board();
    expectCode(await rejection(io.reconfigure({ status_led: 27 })), 'E_GPIO_CONFIG');
    expectCode(await rejection(io.reconfigure({ reset_button: -1 })), 'E_GPIO_CONFIG');
    expectCode(await rejection(io.reconfigure({ sensor_enable: 2.5 })), 'E_GPIO_CONFIG');
    expect(fake.openPins()).to.deep.equal([17, 22, 27]);
  });

  it('close: timers stopped, LED off, sensor low, every pin released; later calls do nothing', async () => {
    await board();
    io.setStatus('unprovisioned');
    await io.setSensorEnabled(true);
    await io.close();
    expect(timers.pending()).to.equal(0);
    expect(fake.openPins()).to.deep.equal([]);
    expect(fake.writesFor(17).at(-1)?.value).to.equal(false);
    expect(fake.writesFor(27).at(-1)?.value).to.equal(false);
    expect(fake.isClosed).to.equal(true);
    const writes = fake.writes.length;
    io.setStatus('enrolling');
    await io.setSensorEnabled(true);
    timers.advance(5000);
    expect(fake.writes).to.have.length(writes);
    await io.close();
    expect((await io.check()).ok).to.equal(false);
  });

  it('invalid pins in the config are reported and left unwired, not thrown', async () => {
    fake = new FakeGpioBackend({ now: () => timers.now() });
    io = await createBoardIo({ backend: 'fake', status_led: 17, sensor_enable: 17, reset_hold_s: -3 }, undefined, { timers, backend: fake });
    const errors: Error[] = [];
    io.onError((err) => errors.push(err));
    await tick();
    expect(errors.map((e) => (e as GpioError).code)).to.deep.equal(['E_GPIO_CONFIG', 'E_GPIO_CONFIG']);
    expect(fake.openPins()).to.deep.equal([17]);
    const check = await io.check();
    expect(check.ok).to.equal(false);
    expect(check.detail).to.include('sensor_enable FAILED [E_GPIO_CONFIG]');
    expect(check.detail).to.include('reset_hold_s');
    await io.reconfigure({ sensor_enable: 27 });
    expect(fake.openPins()).to.deep.equal([17, 27]);
    expect((await io.check()).detail).not.to.include('sensor_enable FAILED');
  });
});

describe('agent/gpio BoardIo without a backend', () => {
  let tmp: string;
  let io: BoardIo | undefined;

  beforeEach(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'gpio-none-'));
  });

  afterEach(async () => {
    await io?.close();
    io = undefined;
    await rm(tmp, { recursive: true, force: true });
  });

  it("backend 'none': every call is a no-op and the self-test passes", async () => {
    io = await createBoardIo({ backend: 'none', ...PINS });
    expect(io.backend).to.equal('none');
    io.setStatus('error');
    await io.setSensorEnabled(true);
    await io.reconfigure({ status_led: 5 });
    const check = await io.check();
    expect(check.ok).to.equal(true);
    expect(check.detail).to.include('disabled by configuration');
  });

  it("'auto' falls back to none with the reason; the self-test fails only while pins are configured", async () => {
    const { log, lines } = recorder();
    io = await createBoardIo({ backend: 'auto', sysfs_root: join(tmp, 'gpio'), ...PINS }, log);
    expect(io.backend).to.equal('none');
    expect(lines.some(([level, msg]) => level === 'warn' && msg.includes('running without GPIO'))).to.equal(true);
    const errors: Error[] = [];
    io.onError((err) => errors.push(err));
    await tick();
    expect(errors).to.deep.equal([]);
    const check = await io.check();
    expect(check.ok).to.equal(false);
    expect(check.detail).to.include('set gpio.backend to "none"');
    await io.close();

    io = await createBoardIo({ backend: 'auto', sysfs_root: join(tmp, 'gpio') });
    expect((await io.check()).ok).to.equal(true);
  });

  it("explicit 'onoff' that cannot work is reported as an error, and the agent keeps running on none", async () => {
    const { log, lines } = recorder();
    io = await createBoardIo({ backend: 'onoff', sysfs_root: join(tmp, 'gpio'), ...PINS }, log);
    expect(io.backend).to.equal('none');
    const errors: Error[] = [];
    io.onError((err) => errors.push(err));
    await tick();
    expect(errors).to.have.length(1);
    expectCode(errors[0], 'E_GPIO_CONFIG');
    expect(lines.some(([level]) => level === 'error')).to.equal(true);
    expect((await io.check()).ok).to.equal(false);
  });

  it('validateGpioPins and resetHoldProblem refuse what createBoardIo would only report (gpio.backend: config.test.ts)', () => {
    validateGpioPins(PINS);
    validateGpioPins({ status_led: null });
    expect(resetHoldProblem(5)).to.equal(null);
    expect(() => validateGpioPins({ status_led: 22, reset_button: 22 })).to.throw(GpioError, /both GPIO 22/);
    expect(resetHoldProblem(0))
      .to.be.instanceOf(GpioError)
      .with.property('message')
      .that.matches(/reset_hold_s/);
    expect(() => validateGpioPins({ sensor_enable: 1.5 })).to.throw(GpioError, /sensor_enable/);
    expect(() => validateGpioPins({ sensor_enable: 64 })).to.throw(GpioError, /sensor_enable/);
  });
});

interface StubGpio extends OnoffGpio {
  readonly gpio: number;
  readonly direction: string;
  readonly edge?: string;
  readonly options?: { debounceTimeout?: number; activeLow?: boolean };
  readonly written: number[];
  unexported: boolean;
  emit(value: 0 | 1): void;
}

/** A stand-in for onoff's module that records what the backend asks of it (no /sys/class/gpio here). */
function stubOnoff(accessible: boolean): { module: OnoffModule; gpios: StubGpio[] } {
  const gpios: StubGpio[] = [];
  class Gpio implements StubGpio {
    static readonly accessible = accessible;
    readonly written: number[] = [];
    unexported = false;
    private value: 0 | 1;
    private watchers: ((err: Error | null | undefined, value: 0 | 1) => void)[] = [];
    constructor(
      readonly gpio: number,
      readonly direction: 'in' | 'out' | 'high' | 'low',
      readonly edge?: 'none' | 'rising' | 'falling' | 'both',
      readonly options?: { debounceTimeout?: number; activeLow?: boolean },
    ) {
      this.value = direction === 'high' ? 1 : 0;
      gpios.push(this);
    }
    readSync(): 0 | 1 {
      return this.value;
    }
    writeSync(value: 0 | 1): void {
      this.value = value;
      this.written.push(value);
    }
    watch(callback: (err: Error | null | undefined, value: 0 | 1) => void): void {
      this.watchers.push(callback);
    }
    unwatchAll(): void {
      this.watchers = [];
    }
    unexport(): void {
      this.unexported = true;
    }
    emit(value: 0 | 1): void {
      this.value = value;
      for (const w of this.watchers) w(null, value);
    }
  }
  return { module: { Gpio }, gpios };
}

describe('agent/gpio onoff backend (stubbed onoff on fake sysfs trees)', () => {
  let tmp: string;

  async function tree(chips: { base: number; label: string; ngpio: number }[]): Promise<string> {
    const root = join(tmp, 'gpio');
    await mkdir(root);
    for (const c of chips) {
      await mkdir(join(root, `gpiochip${c.base}`));
      await writeFile(join(root, `gpiochip${c.base}`, 'base'), `${c.base}\n`);
      await writeFile(join(root, `gpiochip${c.base}`, 'label'), `${c.label}\n`);
      await writeFile(join(root, `gpiochip${c.base}`, 'ngpio'), `${c.ngpio}\n`);
    }
    return root;
  }

  beforeEach(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'gpio-onoff-'));
  });

  afterEach(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('Pi 4 on 6.6+: exports sysfs 529/539/534, button on both edges, debounced, active-low', async () => {
    const chip = await findHeaderChip({ root: await tree([{ base: 512, label: 'pinctrl-bcm2711', ngpio: 58 }]) });
    const stub = stubOnoff(true);
    const timers = new ManualTimers();
    const io = await createBoardIo({ backend: 'onoff', ...PINS, reset_hold_s: 1 }, undefined, {
      backend: await OnoffBackend.create(chip, stub.module),
      timers,
    });
    expect(io.backend).to.equal('onoff');
    expect(stub.gpios.map((g) => [g.gpio, g.direction, g.edge ?? null])).to.deep.equal([
      [529, 'low', null],
      [539, 'low', null],
      [534, 'in', 'both'],
    ]);
    expect(stub.gpios[2]?.options).to.deep.equal({ debounceTimeout: 50, activeLow: true });
    io.setStatus('provisioned');
    await io.setSensorEnabled(true);
    expect(stub.gpios[0]?.written).to.deep.equal([1]);
    expect(stub.gpios[1]?.written).to.deep.equal([1]);
    const check = await io.check();
    expect(check.ok).to.equal(true);
    expect(check.detail).to.include('BCM 17 = sysfs 529 (gpiochip512 pinctrl-bcm2711)');
    let resets = 0;
    io.onResetHeld(() => resets++);
    stub.gpios[2]?.emit(1);
    timers.advance(1000);
    expect(resets).to.equal(1);
    // A repeated "pressed" edge (contact bounce past the debounce) is still the same press.
    stub.gpios[2]?.emit(1);
    timers.advance(1000);
    expect(resets).to.equal(1);
    await io.close();
    expect(stub.gpios.map((g) => g.unexported)).to.deep.equal([true, true, true]);
    expect(stub.gpios[0]?.written.at(-1)).to.equal(0);
  });

  it('Pi 5: drives the rp1 lines (BCM 17 = sysfs 588)', async () => {
    const chip = await findHeaderChip({
      root: await tree([
        { base: 512, label: 'gpio-brcmstb@107d508500', ngpio: 32 },
        { base: 571, label: 'pinctrl-rp1', ngpio: 54 },
      ]),
    });
    const stub = stubOnoff(true);
    const io = await createBoardIo({ backend: 'onoff', status_led: 17 }, undefined, {
      backend: await OnoffBackend.create(chip, stub.module),
      timers: new ManualTimers(),
    });
    expect(stub.gpios.map((g) => g.gpio)).to.deep.equal([588]);
    await io.close();
  });

  it('E_GPIO_UNAVAILABLE when /sys/class/gpio/export is not writable; E_GPIO_BACKEND when onoff cannot be imported', async () => {
    const chip = { dir: 'gpiochip512', label: 'pinctrl-bcm2711', base: 512, ngpio: 58 };
    const err = expectCode(await rejection(OnoffBackend.create(chip, stubOnoff(false).module)), 'E_GPIO_UNAVAILABLE');
    expect(err.message).to.include('gpio group');
    expectCode(await rejection(loadOnoff('./no-such-gpio-module.js')), 'E_GPIO_BACKEND');
  });
});
