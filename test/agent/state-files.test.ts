/**
 * The agent's other state files (issue 26): `next-will.json` (the next start's first will, sealed
 * ahead) and `selftest.json` (the last self-test, carried by reports) are read like state.json:
 * type, owner, mode and size are checked on the open file, a FIFO does not block.
 *
 * The real `sensor-agent run` as a child process over aedes (a FIFO read by a regression blocks
 * that process, not this one: every wait here has a bound). A next-will.json that is a FIFO, a
 * symlink, another user's file, mode 0666 or 64 MB is ignored with a warning naming the file and
 * why, and removed: the connect report's session is not the one sealed in it. A FIFO or a mode
 * 0666 selftest.json does not hold up the connection; it is refused with a clear error, reports
 * carry no self-test, and `sensor-agent status` says why.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { chmod, chown, lstat, mkdir, readFile, writeFile, symlink, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import mqtt, { type MqttClient } from 'mqtt';
import { KeyRing, openReport, reportTopic, toPublicJwk, type ReportClaims } from '../../protocol/index.js';
import { KeyStore } from '../../agent/store/keystore.js';
import { NEXT_WILL_FILE } from '../../agent/net/reporter.js';
import { SELFTEST_FILE } from '../../agent/store/selftest-record.js';
import { AGENT_CLI, spawnAgent, type AgentProcess } from '../helpers/agent-process.js';
import { exists, PREFIX, SERVER_ID, useAgentProcessSuite, waitFor } from './agent-fixture.js';

const run = promisify(execFile);
const DEVICE = 'sensor-statefiles';
const MB = 1024 * 1024;

/** Opens every report of the device with the server's keys. */
class Reports {
  readonly got: ReportClaims[] = [];
  #client!: MqttClient;

  async connect(url: string, serverKey: Parameters<typeof KeyRing.create>[0][number], keystore: string): Promise<void> {
    const ks = await KeyStore.open(keystore);
    const decryption = await KeyRing.create([serverKey]);
    const verification = await KeyRing.create([toPublicJwk(ks.signingKey!)]);
    this.#client = await mqtt.connectAsync(url, { clientId: `statefiles-reports-${Math.random().toString(16).slice(2, 8)}`, reconnectPeriod: 0 });
    this.#client.on('message', (_t, payload) => {
      void openReport(payload, { serverId: SERVER_ID, deviceId: DEVICE, decryption, verification }).then(
        ({ claims }) => this.got.push(claims),
        () => undefined,
      );
    });
    await this.#client.subscribeAsync(reportTopic(PREFIX, DEVICE), { qos: 1 });
  }

  async close(): Promise<void> {
    await this.#client?.endAsync(true).catch(() => undefined);
  }
}

describe('agent: next-will.json and selftest.json are checked like state.json (sensor-agent run, aedes)', function () {
  this.timeout(60_000);
  const s = useAgentProcessSuite(DEVICE, 'SIGKILL');
  const reports = new Reports();
  let agent: AgentProcess | undefined;
  /** A valid next-will.json, sealed by a first run. */
  let sealed = '';
  let nextWill = '';
  let selftest = '';

  before(async function () {
    nextWill = join(s.files.stateDir, NEXT_WILL_FILE);
    selftest = join(s.files.stateDir, SELFTEST_FILE);
    await reports.connect(s.broker.url, s.server.party.encryption, s.files.keystore);
    agent = spawnAgent(s.files.configPath);
    await waitFor('next-will.json of a first run', () => exists(nextWill), 15_000);
    sealed = await readFile(nextWill, 'utf8');
    await stopAgent();
  });

  afterEach(async function () {
    if (this.currentTest?.state === 'failed' && agent) process.stderr.write(agent.output().slice(-4000));
    await stopAgent();
    await rm(nextWill, { force: true });
    await rm(selftest, { force: true });
  });

  after(async () => {
    await reports.close();
  });

  async function stopAgent(): Promise<void> {
    if (!agent) return;
    if (agent.running()) agent.child.kill('SIGKILL');
    await agent.exited;
    agent = undefined;
  }

  /** Starts the agent; resolves with its first connect report (bounded: a blocked start fails here). */
  async function startAndConnect(): Promise<ReportClaims> {
    const seen = reports.got.length;
    const a = spawnAgent(s.files.configPath);
    agent = a;
    await waitFor('the agent to connect and report (a FIFO must not block it)', () => reports.got.slice(seen).some((r) => r.reason === 'connect'), 15_000);
    return reports.got.slice(seen).find((r) => r.reason === 'connect')!;
  }

  const sessionOf = (text: string): string => (JSON.parse(text) as { session: string }).session;

  it('a valid next-will.json is used (the control: its session is the run’s)', async function () {
    await writeFile(nextWill, sealed, { mode: 0o600 });
    const c = await startAndConnect();
    expect(c.session).to.equal(sessionOf(sealed));
  });

  const bad: { name: string; plant: () => Promise<void>; why: RegExp }[] = [
    {
      name: 'a FIFO',
      plant: async () => void (await run('mkfifo', ['-m', '600', nextWill])),
      why: /is not a regular file \(a FIFO\)/,
    },
    {
      name: 'owned by another user',
      plant: async () => {
        await writeFile(nextWill, sealed, { mode: 0o600 });
        await chown(nextWill, 65534, 65534);
      },
      why: /owned by uid 65534/,
    },
    {
      name: 'mode 0666',
      plant: async () => {
        await writeFile(nextWill, sealed, { mode: 0o600 });
        await chmod(nextWill, 0o666);
      },
      why: /has mode 0666/,
    },
    {
      name: 'a symlink to a valid will elsewhere',
      plant: async () => {
        const elsewhere = join(s.files.dir, 'elsewhere');
        await mkdir(elsewhere, { recursive: true, mode: 0o700 });
        await writeFile(join(elsewhere, 'will.json'), sealed, { mode: 0o600 });
        await symlink(join(elsewhere, 'will.json'), nextWill);
      },
      why: /is a symbolic link/,
    },
    {
      name: '64 MB (a valid will padded with whitespace)',
      plant: async () => {
        await writeFile(nextWill, sealed + ' '.repeat(64 * MB), { mode: 0o600 });
      },
      why: /is 671\d{5} bytes/,
    },
  ];

  for (const b of bad) {
    it(`next-will.json ${b.name}: ignored with a warning naming the file and why, removed, sealed again`, async function () {
      await b.plant();
      const c = await startAndConnect();
      expect(c.session, 'the session sealed in the refused file was used').to.not.equal(sessionOf(sealed));
      const warning = agent!
        .output()
        .split('\n')
        .find((l) => l.includes('next-will.json ignored'));
      expect(warning, 'no warning').to.be.a('string');
      expect(warning).to.include(nextWill);
      expect(warning).to.match(b.why);
      // Removed (a symlink itself, never what it points at); the run then seals a new one, a regular 0600 file.
      await waitFor('a new next-will.json', async () => {
        const st = await lstat(nextWill).catch(() => undefined);
        return st !== undefined && st.isFile() && st.uid === process.getuid!() && (st.mode & 0o777) === 0o600 && st.size < 32_768;
      });
      if (b.name.startsWith('a symlink')) expect(await readFile(join(s.files.dir, 'elsewhere', 'will.json'), 'utf8')).to.equal(sealed);
    });
  }

  for (const [name, plant] of [
    ['a FIFO', async () => void (await run('mkfifo', ['-m', '600', selftest]))],
    [
      'mode 0666',
      async () => {
        await writeFile(selftest, JSON.stringify({ ok: true, at: 1_700_000_000 }), { mode: 0o600 });
        await chmod(selftest, 0o666);
      },
    ],
  ] as const) {
    it(`selftest.json ${name}: the agent connects and reports, without trusting it; the error is logged and shown by status`, async function () {
      await plant();
      const c = await startAndConnect();
      expect(c.selftest, 'a refused record was reported').to.equal(null);
      await waitFor('the refusal in the log', () => /self-test record refused .*selftest\.json is refused/.test(agent!.output()));
      const status = await run(process.execPath, [AGENT_CLI, 'status', '--json', '--config', s.files.configPath], { timeout: 10_000 });
      const r = JSON.parse(status.stdout) as { last_selftest: unknown; last_selftest_error?: string };
      expect(r.last_selftest).to.equal(null);
      expect(r.last_selftest_error).to.match(/^E_SELFTEST_RECORD: .*selftest\.json is refused: .*(FIFO|mode 0666)/);
    });
  }
});
