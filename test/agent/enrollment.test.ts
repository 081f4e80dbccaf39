/**
 * Enrollment and the reset button, through a real broker (aedes in process)
 * and the fake GPIO backend:
 * - the agent resends its enrollment with backoff until the server answers
 *   (here the server ignores the first two and answers the third), applies
 *   the `request`, removes the token and stops enrolling;
 * - a token the server does not accept: never answered, the agent stays
 *   unprovisioned, keeps retrying, keeps running;
 * - the status LED: slow blink while unprovisioned, fast blink while
 *   enrolling, solid once provisioned (read from the fake backend's writes);
 * - the reset button held for gpio.reset_hold_s returns a provisioned board
 *   to unprovisioned (keys wiped, exit 10), a short press does nothing, and
 *   the board can then be enrolled again with a new token.
 */
import { expect } from 'chai';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type RunningAgent } from '../../agent/agent.js';
import { bufferedLogger } from '../../lib/log.js';
import { fakeGpio, startWithFakeGpio, type FakeGpioBackend, type FakeWrite } from '../helpers/fake-gpio.js';
import { exists, makeDevice, PREFIX, readDeviceState, useAedesSuite, waitFor, type DeviceFiles } from './agent-fixture.js';

const LED = 17;
const SENSOR = 27;
const BUTTON = 22;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The LED pattern writes (the first write to the pin is its opening at low level). */
function patternWrites(fake: FakeGpioBackend): FakeWrite[] {
  return fake.writesFor(LED).slice(1);
}

function gaps(writes: FakeWrite[]): number[] {
  return writes.slice(1).map((w, i) => w.at - writes[i]!.at);
}

describe('agent enrollment and reset button (aedes, fake GPIO)', function () {
  this.timeout(20_000);
  const logs = bufferedLogger('debug');

  const s = useAedesSuite(logs);

  async function device(deviceId: string, o: { token?: string; keys?: boolean; gpio?: Record<string, unknown> } = {}): Promise<DeviceFiles> {
    const files = await makeDevice({
      deviceId,
      brokerUrl: s.broker.url,
      server: s.party,
      ...(o.token !== undefined ? { token: o.token } : {}),
      ...(o.keys ? { keys: true } : {}),
      ...(o.gpio ? { extra: { gpio: o.gpio } } : {}),
    });
    s.dirs.push(files.dir);
    return files;
  }

  async function start(files: DeviceFiles, retry = { retryMinMs: 300, retryMaxMs: 600 }): Promise<RunningAgent> {
    const agent = await startWithFakeGpio(
      { configPath: files.configPath, log: logs.logger, backoff: { minMs: 50, maxMs: 500 }, enrollment: retry },
      startAgent,
    );
    s.running.add(agent);
    return agent;
  }

  /** Counts the enrollment messages of `deviceId` the broker delivers to the server; calls `on(n)` for each. */
  function countEnrollments(deviceId: string, on: (n: number) => void = () => undefined): () => number {
    let n = 0;
    const topic = `${PREFIX}/${deviceId}/enroll`;
    s.server.client.on('message', (t) => {
      if (t !== topic) return;
      n += 1;
      on(n);
    });
    return () => n;
  }

  it('retries with backoff until the server answers the third enrollment, then is provisioned, removes the token and stops enrolling; LED fast blink then solid', async function () {
    const mark = logs.lines.length;
    const deviceId = 'enroll-retry';
    const files = await device(deviceId, { token: 'tok-good' });
    // The server's own handler checks the token after decrypting (asynchronously): expecting it from the
    // third message on leaves the first two unanswered.
    const count = countEnrollments(deviceId, (n) => {
      if (n === 3) s.server.expectEnrollment(deviceId, 'tok-good', 'alice');
    });
    const agent = await start(files);
    let ledAtProvisioned: FakeWrite[] = [];
    const provisioned = new Promise<string>((r) =>
      agent.once('provisioned', (user) => {
        ledAtProvisioned = patternWrites(fakeGpio(agent));
        r(user);
      }),
    );
    expect(await provisioned).to.equal('alice');
    expect(count()).to.be.at.least(3);
    const mine = logs.lines.slice(mark);
    for (const attempt of [1, 2, 3])
      expect(
        mine.find((l) => new RegExp(`enrollment sent.*attempt=${attempt}\\b`).test(l)),
        `attempt ${attempt}`,
      ).to.be.a('string');

    const ack = await s.server.waitAck((a) => a.claims.iss === deviceId);
    expect(ack.claims.status).to.equal('applied');
    await waitFor('the token file to be removed', async () => !(await exists(files.tokenFile)));
    const st = await readDeviceState(files);
    expect(st.provisioned).to.equal(true);
    expect(st.user_id).to.equal('alice');
    expect(fakeGpio(agent).value(SENSOR)).to.equal(true);

    // LED: fast blink (200 ms steps; the unprovisioned blink has 1000 ms steps) while enrolling, then solid on.
    const blink = ledAtProvisioned.slice(0, -1);
    expect(blink.length).to.be.at.least(3);
    expect(blink.map((w) => w.value)).to.deep.equal(blink.map((_, i) => i % 2 === 0));
    expect(Math.min(...gaps(blink))).to.be.below(900);
    expect(ledAtProvisioned.at(-1)?.value).to.equal(true);

    // Enrolling stopped: no enrollment and no LED change for longer than the retry cap.
    const n = count();
    const ledWrites = fakeGpio(agent).writesFor(LED).length;
    await sleep(800);
    expect(count()).to.equal(n);
    expect(fakeGpio(agent).writesFor(LED).length).to.equal(ledWrites);
    expect(fakeGpio(agent).value(LED)).to.equal(true);
  });

  it('with a token the server does not accept: stays unprovisioned, keeps retrying, keeps running', async function () {
    const deviceId = 'enroll-wrong';
    const files = await device(deviceId, { token: 'tok-wrong' });
    s.server.expectEnrollment(deviceId, 'tok-right', 'bob');
    const count = countEnrollments(deviceId);
    const agent = await start(files, { retryMinMs: 100, retryMaxMs: 200 });
    let exited: number | undefined;
    void agent.exited.then((s) => (exited = s));
    await waitFor('four enrollment attempts', () => count() >= 4);
    expect(s.server.acks.some((a) => a.claims.iss === deviceId)).to.equal(false);
    const st = await readDeviceState(files);
    expect(st.provisioned).to.equal(false);
    expect(st.last_seq).to.equal(0);
    expect(await exists(files.tokenFile)).to.equal(true);
    expect(agent.connected).to.equal(true);
    expect(exited).to.equal(undefined);
    expect(fakeGpio(agent).value(SENSOR)).to.equal(false);
    await agent.stop();
    s.running.delete(agent);
    expect(await agent.exited).to.equal(0);
  });

  it('reset button: a short press does nothing; held reset_hold_s it wipes the provisioned board to unprovisioned (exit 10); it can enroll again', async function () {
    const deviceId = 'reset-board';
    const gpio = { backend: 'fake', status_led: LED, sensor_enable: SENSOR, reset_button: BUTTON, reset_hold_s: 1 };
    const files = await device(deviceId, { keys: true, gpio });
    await s.server.registerFromKeystore(deviceId, files.keystore);
    const agent = await start(files);
    const fake = fakeGpio(agent);
    if (!agent.connected) await new Promise<void>((r) => agent.once('ready', () => r()));

    // Keys but no token and no request yet: the slow "unprovisioned" blink (1 s steps).
    await waitFor('the LED to go off once', () => patternWrites(fake).length >= 2);
    const slow = patternWrites(fake).slice(0, 2);
    expect(slow.map((w) => w.value)).to.deep.equal([true, false]);
    expect(gaps(slow)[0]).to.be.at.least(950);

    const ack = await s.server.command(deviceId, 'request', {}, { userId: 'alice' });
    expect(ack.claims.status).to.equal('applied');
    await waitFor('the sensor to be enabled', () => fake.value(SENSOR) === true);
    expect(fake.value(LED)).to.equal(true);

    // A press shorter than the hold time: nothing happens.
    fake.press(BUTTON);
    await sleep(300);
    fake.release(BUTTON);
    await sleep(1000);
    expect((await readDeviceState(files)).provisioned).to.equal(true);
    expect(agent.connected).to.equal(true);

    // Held: reset to unprovisioned, keys wiped, sensor off, the agent exits 10 (as after a delete).
    fake.press(BUTTON);
    expect(await agent.exited).to.equal(10);
    s.running.delete(agent);
    expect(logs.find(/reset button held/)).to.be.a('string');
    const st = await readDeviceState(files);
    expect(st.provisioned).to.equal(false);
    expect(st.decommissioned).to.equal(true);
    expect(st.user_id).to.equal(null);
    for (const f of ['signing.jwk', 'encryption.jwk']) expect(await exists(join(files.keystore, f))).to.equal(false);
    expect(fake.writesFor(SENSOR).at(-1)?.value).to.equal(false);

    // Back to the start of a board's life: a new token enrolls it again.
    await writeFile(files.tokenFile, 'tok-again\n', { mode: 0o600 });
    s.server.expectEnrollment(deviceId, 'tok-again', 'carol');
    const again = await start(files);
    const user = await new Promise<string>((r) => again.once('provisioned', r));
    expect(user).to.equal('carol');
    const st2 = await readDeviceState(files);
    expect(st2.provisioned).to.equal(true);
    expect(st2.decommissioned).to.equal(false);
    expect(await exists(files.tokenFile)).to.equal(false);
  });
});
