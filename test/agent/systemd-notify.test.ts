/**
 * systemd integration of `sensor-agent run`, as a child process with
 * NOTIFY_SOCKET set and a fake `systemd-notify` first on PATH (a sh script
 * logging its arguments and environment). What a real systemd needs from a
 * Type=notify, NotifyAccess=all, WatchdogSec= unit (systemd/sensor-agent.service):
 * - READY=1 once, as soon as the local start-up is done, also while the
 *   broker is unreachable (a board that boots offline must not time out its
 *   start: see the last test below), never again on reconnects;
 * - every message names the main PID (`--pid=<agent pid>`, as MAINPID): the
 *   sender is the short-lived systemd-notify child;
 * - WATCHDOG=1 at least every WATCHDOG_USEC/2 while the process is healthy,
 *   including while it is reconnecting (a broker outage is handled in process;
 *   a restart would not help);
 *   none when WATCHDOG_PID names another process;
 * - STATUS= says whether the broker is connected and, while it is not, what
 *   the agent waits for (broker, reason, attempt, next delay); STOPPING=1 on SIGTERM.
 */
import { expect } from 'chai';
import { chmod, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitingStatus } from '../../agent/agent.js';
import { TEST_TIME_SCALE_ENV, testTimeScale } from '../../agent/commands/run.js';
import { shortReason } from '../../agent/net/mqtt-session.js';
import { spawnAgent, type AgentProcess } from '../helpers/agent-process.js';
import { freePort, shouldRunMosquitto, startAedes, startMosquitto, type AedesBroker } from '../helpers/brokers.js';
import { makeParty, type Party } from '../helpers/keys.js';
import { SYSTEMD_DIR } from '../deploy/repo-paths.js';
import { exists, makeDevice, readDeviceState, removeDir, TestServer, type DeviceFiles } from './agent-fixture.js';
import { agentExitStatus } from '../../agent/commands/exit-statuses.js';

/** One setting of systemd/sensor-agent.service (its single occurrence), or undefined. */
function unitSetting(text: string, key: string): string | undefined {
  const values = [...text.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((m) => m[1]!.trim());
  expect(values.length, `${key} set at most once`).to.be.at.most(1);
  return values[0];
}

/** A systemd time span such as 90s, 10min or 0, in seconds (the forms the unit uses). */
function seconds(span: string): number {
  const m = /^(\d+)\s*(ms|s|min|h)?$/.exec(span);
  if (!m) throw new Error(`unsupported time span ${span}`);
  return Number(m[1]) * { ms: 0.001, s: 1, min: 60, h: 3600 }[m[2] ?? 's']!;
}

interface Notification {
  args: string[];
  notifySocket: string;
  watchdogUsec: string;
}

describe('sensor-agent run under systemd (fake systemd-notify)', function () {
  let server: Party;
  let bin: string;
  let logFile: string;
  const dirs: string[] = [];
  let agent: AgentProcess | undefined;
  let broker: AedesBroker | undefined;
  const SOCKET = '/run/systemd/notify-test.sock';

  const notifications = async (): Promise<Notification[]> => {
    let text: string;
    try {
      text = await readFile(logFile, 'utf8');
    } catch {
      return [];
    }
    return text
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => {
        const [notifySocket = '', watchdogUsec = '', ...args] = l.split('\t');
        return { notifySocket, watchdogUsec, args: args.filter((x) => x !== '') };
      });
  };
  const withArg = (ns: Notification[], a: string): Notification[] => ns.filter((n) => n.args.includes(a));
  const until = async (what: string, test: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!(await test())) {
      if (agent && !agent.running()) throw new Error(`agent exited (${String(await agent.exited)}) waiting for ${what}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const pings = async (): Promise<number> => withArg(await notifications(), 'WATCHDOG=1').length;
  const morePings = async (what: string, n = 2): Promise<void> => {
    const start = await pings();
    await until(`${n} more watchdog pings ${what}`, async () => (await pings()) >= start + n);
  };
  const device = async (deviceId: string, url: string, o: { caFile?: string; token?: string } = {}): Promise<DeviceFiles> => {
    const files = await makeDevice({
      deviceId,
      brokerUrl: url,
      server,
      ...(o.token !== undefined ? { token: o.token } : { keys: true }),
      ...(o.caFile ? { caFile: o.caFile } : {}),
    });
    dirs.push(files.dir);
    return files;
  };
  const start = (files: DeviceFiles, env: Record<string, string>): AgentProcess => {
    agent = spawnAgent(files.configPath, { PATH: `${bin}:${process.env.PATH ?? ''}`, ...env });
    return agent;
  };
  const stopAgent = async (): Promise<number | string> => {
    const a = agent!;
    a.child.kill('SIGTERM');
    const code = await a.exited;
    agent = undefined;
    return code;
  };

  before(async () => {
    server = await makeParty();
    bin = await mkdtemp(join(tmpdir(), 'fake-systemd-'));
    dirs.push(bin);
    logFile = join(bin, 'notify.log');
    const tool = join(bin, 'systemd-notify');
    // One line per call, one append (atomic for short lines): NOTIFY_SOCKET, WATCHDOG_USEC, then each argument, tab-separated.
    await writeFile(tool, `#!/bin/sh\nline=$(printf '%s\\t' "$NOTIFY_SOCKET" "$WATCHDOG_USEC" "$@")\nprintf '%s\\n' "$line" >> '${logFile}'\n`);
    await chmod(tool, 0o755);
  });

  beforeEach(async () => {
    await writeFile(logFile, '');
  });

  afterEach(async function () {
    if (this.currentTest?.state === 'failed') {
      process.stderr.write(`--- agent output ---\n${agent?.output() ?? ''}\n--- notify log ---\n${await readFile(logFile, 'utf8').catch(() => '')}\n---\n`);
    }
    if (agent?.running()) {
      agent.child.kill('SIGKILL');
      await agent.exited;
    }
    agent = undefined;
    await broker?.stop();
    broker = undefined;
  });

  after(async () => {
    for (const d of dirs) await removeDir(d);
  });

  it('READY=1 once, before the broker is reachable; watchdog pings throughout; STATUS follows the connection', async function () {
    this.timeout(90_000);
    const port = await freePort();
    const url = `mqtt://127.0.0.1:${port}`;
    const files = await device('notify-dev', url);
    const a = start(files, { NOTIFY_SOCKET: SOCKET, WATCHDOG_USEC: '400000' });

    // Broker not there yet: the agent is ready (its local start-up is done), healthy, and says what it waits for.
    await until('a failed connection attempt', async () => /WARN broker connection error .*ECONNREFUSED/.test(a.output()));
    await until('READY=1', async () => withArg(await notifications(), 'READY=1').length > 0);
    await until('STATUS= naming the broker it waits for', async () =>
      (await notifications()).some((n) => n.args.some((x) => x.startsWith(`STATUS=waiting for broker ${url}: ECONNREFUSED, attempt `))),
    );
    await morePings('while the broker has never been reachable');
    let ns = await notifications();
    const ready = withArg(ns, 'READY=1');
    expect(ready).to.have.length(1);
    expect(ready[0]!.args).to.include(`STATUS=connecting to broker ${url}`);
    expect(a.output()).not.to.include('INFO subscribed');
    const waiting = ns.flatMap((n) => n.args).filter((x) => x.startsWith('STATUS=waiting'));
    for (const w of waiting)
      expect(w).to.match(new RegExp(`^STATUS=waiting for broker ${url.replace(/[.]/g, '\\.')}: ECONNREFUSED, attempt \\d+, next in \\d+ (ms|s)$`));

    // Broker comes up on the same port: the reconnect subscribes; STATUS says so, READY=1 is not sent again.
    broker = await startAedes({ port });
    await until('STATUS=connected', async () => (await notifications()).some((n) => n.args.includes(`STATUS=connected to ${url}`)));
    expect(a.output()).to.include('INFO subscribed');
    ns = await notifications();
    expect(withArg(ns, 'READY=1')).to.have.length(1);
    for (const n of ns) {
      // systemd-notify is our child: each message names the main PID, and reaches the unit's socket.
      expect(n.args[0], n.args.join(' ')).to.equal(`--pid=${a.pid}`);
      expect(n.notifySocket).to.equal(SOCKET);
    }
    await morePings('while connected');

    // Broker goes away: the agent says so in STATUS and keeps pinging while it reconnects.
    await broker.stop();
    broker = undefined;
    await until('the disconnection', async () => /WARN disconnected from broker/.test(a.output()));
    await until('STATUS= about the disconnection', async () =>
      (await notifications()).some((n) => n.args.some((x) => x.startsWith('STATUS=') && x.includes('disconnected'))),
    );
    const down = (await notifications()).find((n) => n.args.some((x) => x.startsWith('STATUS=') && x.includes('disconnected')))!;
    expect(down.args.join(' ')).to.include(url);
    await morePings('while the broker is down');

    // Back again: a new subscription, STATUS=connected, but no second READY=1.
    const subscribedBefore = a.output().split('INFO subscribed').length;
    broker = await startAedes({ port });
    await until('the resubscription', async () => a.output().split('INFO subscribed').length > subscribedBefore);
    await until('STATUS=connected again', async () => {
      const all = await notifications();
      const lastStatus = all.filter((n) => n.args.some((x) => x.startsWith('STATUS='))).at(-1);
      return lastStatus !== undefined && lastStatus.args.includes(`STATUS=connected to ${url}`) && !lastStatus.args.includes('READY=1');
    });
    await morePings('after the reconnection');
    expect(withArg(await notifications(), 'READY=1'), 'READY=1 is sent once per process').to.have.length(1);

    // SIGTERM: STOPPING=1, then a clean exit.
    expect(await stopAgent()).to.equal(0);
    await until('STOPPING=1', async () => withArg(await notifications(), 'STOPPING=1').length === 1);
    ns = await notifications();
    expect(ns.every((n) => n.args[0] === `--pid=${a.pid}`)).to.equal(true);
  });

  it('no watchdog pings when WATCHDOG_PID names another process; nothing at all without NOTIFY_SOCKET', async function () {
    this.timeout(60_000);
    broker = await startAedes();
    const files = await device('notify-pid', broker.url);

    let a = start(files, { NOTIFY_SOCKET: SOCKET, WATCHDOG_USEC: '400000', WATCHDOG_PID: '1' });
    await until('READY=1', async () => withArg(await notifications(), 'READY=1').length > 0);
    // Several watchdog periods (0.4 s) pass with no ping.
    await new Promise((r) => setTimeout(r, 1500));
    expect(await pings()).to.equal(0);
    expect(await stopAgent()).to.equal(0);

    await writeFile(logFile, '');
    a = start(files, { NOTIFY_SOCKET: '', WATCHDOG_USEC: '400000' });
    await until('the subscription', async () => a.output().includes('INFO subscribed'));
    await new Promise((r) => setTimeout(r, 1000));
    expect(await stopAgent()).to.equal(0);
    expect(await notifications()).to.deep.equal([]);
    expect(a.output()).not.to.include('systemd-notify failed');
  });

  it('STATUS= wording; the test-only time scale refuses a bad value and scales only the retry delays', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 10.0.0.5:8883'), { code: 'ECONNREFUSED' });
    expect(waitingStatus('mqtts://b:8883', { attempt: 7, delayMs: 31_600, reason: shortReason(refused), lost: false })).to.equal(
      'waiting for broker mqtts://b:8883: ECONNREFUSED, attempt 7, next in 32 s',
    );
    expect(waitingStatus('mqtts://b:8883', { attempt: 1, delayMs: 450, reason: 'connection closed', lost: true })).to.equal(
      'disconnected from mqtts://b:8883: connection closed, reconnecting, attempt 1, next in 450 ms',
    );
    expect(shortReason(Object.assign(new Error('certificate is not yet valid'), { code: 'CERT_NOT_YET_VALID' }))).to.equal(
      'CERT_NOT_YET_VALID (is the clock set?)',
    );
    expect(shortReason(Object.assign(new Error('Connection refused: Not authorized'), { code: 5 }))).to.equal('Connection refused: Not authorized');

    expect(testTimeScale({})).to.deep.equal({});
    for (const bad of ['abc', '0', '-1', '2', 'Infinity']) {
      let thrown: unknown;
      expect(() => {
        try {
          testTimeScale({ [TEST_TIME_SCALE_ENV]: bad });
        } catch (err) {
          thrown = err;
          throw err;
        }
      }, bad).to.throw(/a number in \(0, 1\] was expected/);
      expect(agentExitStatus(thrown), bad).to.equal(2);
    }
    const warnings: string[] = [];
    expect(testTimeScale({ [TEST_TIME_SCALE_ENV]: '0.5' }, (w) => warnings.push(w))).to.deep.equal({
      backoff: { minMs: 500, maxMs: 30_000 },
      enrollment: { retryMinMs: 2500, retryMaxMs: 150_000 },
    });
    expect(warnings).to.deep.equal([`WARN ${TEST_TIME_SCALE_ENV}=0.5 (test only): retry delays scaled by 0.5\n`]);
  });

  /*
   * Issue 9: a board that boots without its broker (no network yet, DNS, TLS before the clock is
   * set) used to time out every start (READY=1 only after the first subscription) and, after
   * StartLimitBurst starts, systemd gave up on the unit for good. The outage that killed a board
   * was TimeoutStartSec x StartLimitBurst of the unit (read from the unit file here; systemd's
   * default burst, 5, where the unit sets none).
   *
   * How this is proved without a multi-minute wait: time is scaled by SCALE (a minute of board
   * time per second). The agent's own timers are scaled through the test-only
   * SENSOR_AGENT_TEST_TIME_SCALE (reconnect backoff 1 s..60 s and enrollment retries 5 s..5 min,
   * see agent/commands/run.ts), the watchdog through WATCHDOG_USEC (the unit's WatchdogSec x
   * SCALE), and the broker (mosquitto with TLS, stopped) stays down for TimeoutStartSec x
   * StartLimitBurst x SCALE, with reconnect attempts well past the backoff cap. What is not a
   * timer is not scaled: Node's start and the local start-up are work, so READY=1 is held to the
   * real TimeoutStartSec, and it has to come while the broker is down (it is down throughout).
   * "Never failed" is then: one process from start to enrollment, never exited, watchdog fed all
   * along (a main process that stays up and pings is never restarted by systemd, so no start
   * limit can apply; the unit also has none, StartLimitIntervalSec=0, checked by the deploy
   * test). The same boot under real systemd, unscaled, is issue 12's emulated-board test.
   */
  it('boots with its broker down for longer than TimeoutStartSec x StartLimitBurst (scaled): ready at once, never exits, STATUS says what it waits for; enrolls when the broker comes up', async function () {
    if (!(await shouldRunMosquitto())) this.skip();
    const SCALE = 1 / 60;
    const unitText = await readFile(join(SYSTEMD_DIR, 'sensor-agent.service'), 'utf8');
    const timeoutStartS = seconds(unitSetting(unitText, 'TimeoutStartSec') ?? '90s');
    const burst = Number(unitSetting(unitText, 'StartLimitBurst') ?? '5');
    const watchdogS = seconds(unitSetting(unitText, 'WatchdogSec') ?? '');
    const downMs = timeoutStartS * burst * SCALE * 1000;
    const capMs = 60_000 * SCALE;
    // Attempts before the backoff reaches its cap (1 s doubling to 60 s): the outage must go well past them.
    const uncapped = Math.ceil(Math.log2(60));
    this.timeout(timeoutStartS * 1000 + downMs + 60_000);

    const mosq = await startMosquitto({ tls: true });
    await mosq.halt();
    const deviceId = 'offline-boot';
    const files = await device(deviceId, mosq.url, { caFile: mosq.caFile!, token: 'tok-offline' });
    let testServer: TestServer | undefined;
    try {
      const startedAt = Date.now();
      const a = start(files, { NOTIFY_SOCKET: SOCKET, WATCHDOG_USEC: String(Math.round(watchdogS * SCALE * 1e6)), [TEST_TIME_SCALE_ENV]: String(SCALE) });

      await until('READY=1 with the broker down', async () => withArg(await notifications(), 'READY=1').length > 0, timeoutStartS * 1000);
      expect(Date.now() - startedAt, "READY=1 within the unit's TimeoutStartSec").to.be.below(timeoutStartS * 1000);
      expect(withArg(await notifications(), 'READY=1')[0]!.args).to.include(`STATUS=connecting to broker ${mosq.url}`);

      // The outage: the process stays up (until() fails as soon as it exits) past the point where systemd used to give up.
      await until(`the broker to stay down ${downMs} ms after the start`, async () => Date.now() - startedAt >= downMs, downMs + 5000);
      await morePings('with the broker still down');
      const waiting = (await notifications()).flatMap((n) => n.args).filter((x) => x.startsWith('STATUS=waiting'));
      const parsed = waiting.map((w) => {
        const m = new RegExp(`^STATUS=waiting for broker ${mosq.url.replace(/[.]/g, '\\.')}: ECONNREFUSED, attempt (\\d+), next in (\\d+) (ms|s)$`).exec(w);
        expect(m, w).to.not.equal(null);
        return { attempt: Number(m![1]), nextMs: Number(m![2]) * (m![3] === 's' ? 1000 : 1) };
      });
      expect(parsed.length).to.be.greaterThan(0);
      const attempts = parsed.map((p) => p.attempt);
      expect(attempts, 'attempt numbers only grow').to.deep.equal([...attempts].sort((x, y) => x - y));
      expect(attempts.at(-1), 'still retrying past the backoff cap').to.be.greaterThan(uncapped + 1);
      for (const p of parsed) expect(p.nextMs, 'delays stay under the cap').to.be.at.most(capMs);
      expect(a.output()).not.to.include('INFO subscribed');
      const beforeBroker = (await notifications()).length;

      // The broker comes up: the same process connects, enrolls and is provisioned.
      await mosq.start();
      testServer = new TestServer(server, mosq.url, mosq.caFile);
      testServer.expectEnrollment(deviceId, 'tok-offline', 'alice');
      await testServer.connect();
      const ack = await testServer.waitAck((x) => x.claims.iss === deviceId, 30_000);
      expect(ack.claims.status).to.equal('applied');
      expect((await readDeviceState(files)).provisioned).to.equal(true);
      await until('the token to be removed', async () => !(await exists(files.tokenFile)));
      await until('STATUS=connected', async () => {
        const last = (await notifications()).filter((n) => n.args.some((x) => x.startsWith('STATUS='))).at(-1);
        return last?.args.includes(`STATUS=connected to ${mosq.url}`) === true;
      });

      const ns = await notifications();
      expect(withArg(ns, 'READY=1'), 'READY=1 once').to.have.length(1);
      expect(
        ns.findIndex((n) => n.args.includes('READY=1')),
        'READY=1 came before the broker was up',
      ).to.be.below(beforeBroker);
      expect(
        ns.every((n) => n.args[0] === `--pid=${a.pid}`),
        'one process throughout',
      ).to.equal(true);
      expect(a.running()).to.equal(true);
      expect(a.output()).to.include(`WARN ${TEST_TIME_SCALE_ENV}=`);
      expect(await stopAgent()).to.equal(0);
    } finally {
      await testServer?.close().catch(() => undefined);
      await mosq.stop();
    }
  });
});
