/**
 * systemd integration of `sensor-agent run`, as a child process with
 * NOTIFY_SOCKET set and a fake `systemd-notify` first on PATH (a sh script
 * logging its arguments and environment). What a real systemd needs from a
 * Type=notify, NotifyAccess=all, WatchdogSec= unit (systemd/sensor-agent.service):
 * - READY=1 once, only after the command topic subscription (not while the
 *   broker is unreachable), never again on reconnects;
 * - every message names the main PID (`--pid=<agent pid>`, as MAINPID): the
 *   sender is the short-lived systemd-notify child;
 * - WATCHDOG=1 at least every WATCHDOG_USEC/2 while the process is healthy,
 *   including while it is reconnecting (a broker outage is handled in process;
 *   a restart would not help and StartLimitBurst would stop the unit for good);
 *   none when WATCHDOG_PID names another process;
 * - STATUS= says whether the broker is connected; STOPPING=1 on SIGTERM.
 */
import { expect } from 'chai';
import { chmod, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnAgent, type AgentProcess } from '../helpers/agent-process.js';
import { freePort, startAedes, type AedesBroker } from '../helpers/brokers.js';
import { makeParty, type Party } from '../helpers/keys.js';
import { makeDevice, removeDir, type DeviceFiles } from './agent-fixture.js';

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
    let text = '';
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
  const device = async (deviceId: string, url: string): Promise<DeviceFiles> => {
    const files = await makeDevice({ deviceId, brokerUrl: url, server, keys: true });
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

  it('READY=1 once after the subscription (not while the broker is down); watchdog pings throughout; STATUS follows the connection', async function () {
    this.timeout(90_000);
    const port = await freePort();
    const url = `mqtt://127.0.0.1:${port}`;
    const files = await device('notify-dev', url);
    const a = start(files, { NOTIFY_SOCKET: SOCKET, WATCHDOG_USEC: '400000' });

    // Broker not there yet: the agent runs and reconnects, healthy, but is not ready.
    await until('a failed connection attempt', async () => /WARN broker connection error .*ECONNREFUSED/.test(a.output()));
    await morePings('while the broker has never been reachable');
    let ns = await notifications();
    expect(withArg(ns, 'READY=1'), 'READY=1 before any broker connection').to.have.length(0);
    expect(a.output()).not.to.include('INFO subscribed');

    // Broker comes up on the same port: the reconnect subscribes, then READY=1 is sent.
    broker = await startAedes({ port });
    await until('READY=1', async () => withArg(await notifications(), 'READY=1').length > 0);
    expect(a.output()).to.include('INFO subscribed');
    ns = await notifications();
    const ready = withArg(ns, 'READY=1');
    expect(ready).to.have.length(1);
    expect(ready[0]!.args).to.include(`STATUS=connected to ${url}`);
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
    await until('STATUS= about the disconnection', async () => (await notifications()).some((n) => n.args.some((x) => x.startsWith('STATUS=') && x.includes('disconnected'))));
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
});
