/**
 * `sensor-agent selftest` loads the GPIO backend for real (issue 9): onoff and its native epoll
 * addon are imported exactly as `run` imports them, so an addon that cannot load fails the
 * self-test with the fix instead of passing while `run` falls back to no GPIO.
 *
 * The broken addons are real: a copy of the installed onoff, epoll, bindings and their
 * dependencies in a temp node_modules, whose build/Release/epoll.node is
 * - the real addon with its ELF header's machine field set to another CPU (what an addon built on
 *   an x86-64 laptop is on an arm64 board: the dynamic loader refuses it),
 * - a file that is not a shared object at all (a damaged copy),
 * - removed (an install that skipped the build).
 * The self-test is pointed at that copy's onoff (SelftestOptions.onoffModule); the loading itself
 * (import, require, dlopen) is the real one.
 */
import { expect } from 'chai';
import { cp, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runSelftest, type Check } from '../../agent/selftest.js';
import { freePort } from '../helpers/brokers.js';
import { makeParty, type Party } from '../helpers/keys.js';
import { makeDevice, removeDir, type DeviceFiles } from './agent-fixture.js';

const NODE_MODULES = fileURLToPath(new URL('../../../node_modules/', import.meta.url));
/** onoff and what it requires at load time. */
const PACKAGES = ['onoff', 'epoll', 'bindings', 'file-uri-to-path', 'lodash.debounce'];
const EM_X86_64 = 62;
const EM_AARCH64 = 183;

type Variant = 'other-cpu' | 'not-elf' | 'missing';

describe('sensor-agent selftest: the GPIO backend is loaded for real', function () {
  this.timeout(30_000);
  let server: Party;
  let brokerUrl: string;
  const dirs: string[] = [];

  /** A copy of onoff whose epoll.node is broken as `variant` says; returns onoff's entry file. */
  async function brokenOnoff(variant: Variant): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), `onoff-${variant}-`));
    dirs.push(dir);
    for (const p of PACKAGES) await cp(join(NODE_MODULES, p), join(dir, 'node_modules', p), { recursive: true });
    const addon = join(dir, 'node_modules/epoll/build/Release/epoll.node');
    expect((await readFile(addon)).subarray(0, 4).toString('latin1')).to.equal('\x7fELF');
    if (variant === 'other-cpu') {
      const fh = await open(addon, 'r+');
      const machine = Buffer.alloc(2);
      machine.writeUInt16LE(process.arch === 'arm64' ? EM_X86_64 : EM_AARCH64);
      await fh.write(machine, 0, 2, 18);
      await fh.close();
    } else if (variant === 'not-elf') {
      await writeFile(addon, 'this is not a shared object\n');
    } else {
      await rm(addon);
    }
    return join(dir, 'node_modules/onoff/onoff.js');
  }

  async function device(name: string, gpio: Record<string, unknown>): Promise<DeviceFiles> {
    const files = await makeDevice({ deviceId: name, brokerUrl, server, keys: true, extra: { gpio } });
    dirs.push(files.dir);
    return files;
  }

  async function gpioCheck(files: DeviceFiles, onoffModule?: string): Promise<{ check: Check; ok: boolean }> {
    const report = await runSelftest({ configPath: files.configPath, brokerTimeoutMs: 2000, ...(onoffModule ? { onoffModule } : {}) });
    const check = report.checks.find((c) => c.id === 'gpio');
    expect(check, 'the report has a gpio check').to.not.equal(undefined);
    return { check: check!, ok: report.ok };
  }

  before(async () => {
    server = await makeParty();
    // Nothing listens there: the broker check fails fast; only the GPIO check is looked at.
    brokerUrl = `mqtt://127.0.0.1:${await freePort()}`;
  });

  after(async () => {
    for (const d of dirs) await removeDir(d);
  });

  it('an addon built for another CPU fails the self-test (pins wired, backend auto), naming the addon, its CPU and the fix', async () => {
    const files = await device('gpio-other-cpu', { backend: 'auto', status_led: 17, sensor_enable: 27 });
    const { check, ok } = await gpioCheck(files, await brokenOnoff('other-cpu'));
    expect(check.status).to.equal('fail');
    expect(check.required).to.equal(true);
    expect(ok).to.equal(false);
    expect(check.reason).to.match(/^cannot load .*onoff\.js \(optional dependency with the native epoll addon\): .*epoll\.node/);
    expect(check.reason).to.include(`is there but built for ${process.arch === 'arm64' ? 'x64' : 'arm64'}`);
    expect(check.reason).to.include(`this is Node.js ${process.version}, module ABI ${process.versions.modules}, ${process.arch}`);
    expect(check.fix).to.include('provisioning/build-agent');
    expect(check.fix).to.include('gpio.backend to "none"');
  });

  it('a damaged addon fails the self-test when onoff is named (no pins)', async () => {
    const files = await device('gpio-not-elf', { backend: 'onoff' });
    const { check } = await gpioCheck(files, await brokenOnoff('not-elf'));
    expect(check.status).to.equal('fail');
    expect(check.required).to.equal(true);
    expect(check.reason).to.match(/epoll\.node: (file too short|invalid ELF header)/);
    expect(check.fix).to.include('provisioning/build-agent');
  });

  it('a missing addon with backend auto and no pins is a warning: run would go without GPIO, nothing is lost', async () => {
    const files = await device('gpio-missing', { backend: 'auto' });
    const { check } = await gpioCheck(files, await brokenOnoff('missing'));
    expect(check.status).to.equal('warn');
    expect(check.required).to.equal(false);
    expect(check.reason).to.include('Could not locate the bindings file');
    expect(check.reason).to.include('no pins configured: the agent runs without GPIO');
    expect(check.reason.length, "the loader's list of tried paths is cut short").to.be.below(600);
  });

  it('the installed addon loads, and the check goes on to the sysfs header chip', async () => {
    const files = await device('gpio-installed', { backend: 'auto', status_led: 17 });
    const { check } = await gpioCheck(files);
    expect(check.reason).not.to.include('cannot load');
    // On a board: pass with the pin mapping; on a machine without sysfs GPIO: the chip is what fails.
    if (check.status === 'pass') expect(check.reason).to.match(/^backend onoff loaded \(native addon ok\); .*status_led 17 -> gpio\d+/);
    else expect(check.reason).to.match(/gpiochip|\/sys\/class\/gpio/);
  });
});
