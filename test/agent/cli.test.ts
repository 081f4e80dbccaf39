/**
 * The `sensor-agent` CLI as an operator meets it: `node build/host/sensor-agent.mjs` (the bundle the boards run)
 * as a child process. Key store permission refusals name the file and the
 * exact chmod; bad usage and bad config exit 2; `status` before and after
 * provisioning; `selftest` against a live and a dead broker; SIGTERM stops
 * `run` cleanly with status 0.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AGENT_CLI, spawnAgent, type AgentProcess } from '../helpers/agent-process.js';
import { startAedes, type AedesBroker } from '../helpers/brokers.js';
import { makeParty, type Party } from '../helpers/keys.js';
import { makeDevice, removeDir, TestServer, type DeviceFiles } from './agent-fixture.js';

interface CliResult {
  code: number | string;
  stdout: string;
  stderr: string;
}

function cli(args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [AGENT_CLI, ...args], { env: { ...process.env, NOTIFY_SOCKET: '' }, timeout: 30_000 }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: number | string; signal?: string }) | null;
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : (e.signal ?? String(e.code))) : 0, stdout, stderr });
    });
  });
}

async function waitFor(agent: AgentProcess, re: RegExp, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!re.test(agent.output())) {
    if (!agent.running()) throw new Error(`agent exited (${String(await agent.exited)}) before ${re}:\n${agent.output()}`);
    if (Date.now() > deadline) throw new Error(`no ${re} within ${timeoutMs} ms:\n${agent.output()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('sensor-agent CLI (child processes)', function () {
  let broker: AedesBroker;
  let server: Party;
  const dirs: string[] = [];
  const device = async (deviceId: string, o: { keys?: boolean; brokerUrl?: string } = {}): Promise<DeviceFiles> => {
    const files = await makeDevice({ deviceId, brokerUrl: o.brokerUrl ?? broker.url, server, keys: o.keys ?? true });
    dirs.push(files.dir);
    return files;
  };

  before(async () => {
    broker = await startAedes();
    server = await makeParty();
  });

  after(async () => {
    await broker?.stop();
    for (const d of dirs) await removeDir(d);
  });

  describe('key store permissions', () => {
    it('a 0644 key file: run exits 2 and selftest exits 1, both naming the file and the exact chmod 600', async () => {
      const files = await device('perm-file');
      const keyFile = join(files.keystore, 'signing.jwk');
      await chmod(keyFile, 0o644);

      const run = await cli(['run', '--config', files.configPath]);
      expect(run.code, run.stderr).to.equal(2);
      expect(run.stderr).to.include(`sensor-agent: E_KEYSTORE_PERMS: key store file ${keyFile} has mode 0644`);
      expect(run.stderr).to.include(`chmod 600 ${keyFile}`);

      const st = await cli(['selftest', '--config', files.configPath, '--timeout', '2']);
      expect(st.code, st.stdout + st.stderr).to.equal(1);
      const line = st.stdout.split('\n').find((l) => l.includes('key store permissions'));
      expect(line).to.match(/^\[FAIL\] /);
      expect(line).to.include(keyFile);
      expect(line).to.include(`chmod 600 ${keyFile}`);
      expect(st.stdout).to.match(/self-test FAILED: .*keystore/);

      const js = await cli(['selftest', '--json', '--config', files.configPath, '--timeout', '2']);
      expect(js.code).to.equal(1);
      const report = JSON.parse(js.stdout) as { ok: boolean; checks: { id: string; status: string; fix?: string; reason: string }[] };
      expect(report.ok).to.equal(false);
      const ks = report.checks.find((c) => c.id === 'keystore');
      expect(ks?.status).to.equal('fail');
      expect(ks?.fix).to.equal(`chmod 600 ${keyFile}`);

      // The fix works: after it, the same key store passes.
      await chmod(keyFile, 0o600);
      const again = JSON.parse((await cli(['selftest', '--json', '--config', files.configPath, '--timeout', '2'])).stdout) as typeof report;
      expect(again.checks.find((c) => c.id === 'keystore')?.status).to.equal('pass');
    });

    it('a 0755 key store directory: run exits 2 and selftest exits 1, both naming it and the exact chmod 700', async () => {
      const files = await device('perm-dir');
      await chmod(files.keystore, 0o755);

      const run = await cli(['run', '--config', files.configPath]);
      expect(run.code, run.stderr).to.equal(2);
      expect(run.stderr).to.include(`sensor-agent: E_KEYSTORE_PERMS: key store directory ${files.keystore} has mode 0755`);
      expect(run.stderr).to.include(`chmod 700 ${files.keystore}`);

      const st = await cli(['selftest', '--config', files.configPath, '--timeout', '2']);
      expect(st.code).to.equal(1);
      const line = st.stdout.split('\n').find((l) => l.includes('key store permissions'));
      expect(line).to.match(/^\[FAIL\] /);
      expect(line).to.include(`chmod 700 ${files.keystore}`);
      // The fix is printed once, not repeated after the reason that already carries it.
      expect(line?.split(`chmod 700 ${files.keystore}`)).to.have.length(2);
    });
  });

  describe('usage and configuration errors', () => {
    it('run --config with a missing file exits 2 naming the file', async () => {
      const dir = (await device('missing-cfg')).dir;
      const missing = join(dir, 'missing.json');
      const r = await cli(['run', '--config', missing]);
      expect(r.code).to.equal(2);
      expect(r.stderr).to.include(`sensor-agent: E_CONFIG: ${missing}: 1 problem:`);
      expect(r.stderr).to.include('the config file does not exist (give another with --config FILE)');
      expect(r.stdout).to.equal('');
      const s = await cli(['status', '--config', missing]);
      expect(s.code).to.equal(2);
      expect(s.stderr).to.include(missing);
    });

    it('run with an invalid config exits 2 listing every problem with its key path', async () => {
      const files = await device('bad-cfg');
      const bad = join(files.dir, 'bad.json');
      await writeFile(
        bad,
        JSON.stringify({ device_id: 'bad-cfg', broker: { url: 'mqtt://broker.example.net:1883' }, trust: 'trust.jwks', log_level: 'loud', extra: 1 }),
      );
      const r = await cli(['run', '--config', bad]);
      expect(r.code).to.equal(2);
      expect(r.stderr).to.include(`sensor-agent: E_CONFIG: ${bad}: 3 problems:`);
      expect(r.stderr).to.match(/^ {2}broker\.url: plain mqtt:\/\/ to broker\.example\.net/m);
      expect(r.stderr).to.match(/^ {2}log_level: must be one of/m);
      expect(r.stderr).to.match(/^ {2}extra: unknown key/m);
    });

    it("an unknown flag or command exits 2 with a usage message pointing at the subcommand's --help", async () => {
      const files = await device('flags');
      const cases: [string[], string][] = [
        [['run', '--config', files.configPath, '--bogus'], 'sensor-agent run --help'],
        [['status', '--jsn', '--config', files.configPath], 'sensor-agent status --help'],
        [['frobnicate'], 'sensor-agent --help'],
      ];
      for (const [args, help] of cases) {
        const r = await cli(args);
        expect(r.code, args.join(' ')).to.equal(2);
        expect(r.stderr, args.join(' ')).to.match(/^sensor-agent: E_USAGE: Unknown argument: (bogus|jsn|frobnicate)\n/);
        expect(r.stderr).to.include(`Run '${help}' for usage.`);
      }
      const none = await cli([]);
      expect(none.code).to.equal(2);
      expect(none.stderr).to.include('Name a command');
    });
  });

  describe('status, provisioning and SIGTERM', () => {
    let files: DeviceFiles;
    let ts: TestServer | undefined;
    let agent: AgentProcess | undefined;
    const deviceId = 'status-dev';

    before(async () => {
      files = await device(deviceId);
    });

    afterEach(function () {
      if (this.currentTest?.state === 'failed' && agent) process.stderr.write(`--- agent output ---\n${agent.output()}\n---\n`);
    });

    after(async () => {
      if (agent?.running()) {
        agent.child.kill('SIGKILL');
        await agent.exited;
      }
      await ts?.close();
    });

    it('status on a fresh device: provisioned false and user_id null at the top level', async () => {
      const r = await cli(['status', '--json', '--config', files.configPath]);
      expect(r.code, r.stderr).to.equal(0);
      const s = JSON.parse(r.stdout) as Record<string, unknown>;
      expect(s.device_id).to.equal(deviceId);
      expect(s).to.have.property('provisioned', false);
      expect(s).to.have.property('user_id', null);
      expect(s.last_seq).to.equal(0);
      expect(s.last_command).to.equal(null);
      const h = await cli(['status', '--config', files.configPath]);
      expect(h.code).to.equal(0);
      expect(h.stdout).to.match(/^provisioned: +no$/m);
      expect(h.stdout).to.match(/^user: +-$/m);
      expect(h.stdout).to.match(/^last seq: +0$/m);
    });

    it('run applies a request, stops on SIGTERM with status 0 after logging a clean stop', async () => {
      ts = new TestServer(server, broker.url);
      await ts.connect();
      await ts.registerFromKeystore(deviceId, files.keystore);
      agent = spawnAgent(files.configPath);
      await waitFor(agent, /INFO subscribed /);
      const ack = await ts.command(deviceId, 'request', {}, { userId: 'alice' });
      expect(ack.claims.status).to.equal('applied');
      expect(ack.claims.seq).to.equal(1);

      agent.child.kill('SIGTERM');
      const code = await agent.exited;
      expect(code, agent.output()).to.equal(0);
      const out = agent.output();
      expect(out).to.include('INFO SIGTERM received: finishing the command in flight and disconnecting');
      expect(out).to.match(/INFO agent stopped status=0\b/);
      expect(out.indexOf('SIGTERM received')).to.be.below(out.indexOf('agent stopped'));
      expect(out).not.to.match(/^(ERROR|sensor-agent: E_)/m);
    });

    it('status after provisioning: provisioned true, the user and the last seq (JSON and human)', async () => {
      const r = await cli(['status', '--json', '--config', files.configPath]);
      expect(r.code, r.stderr).to.equal(0);
      const s = JSON.parse(r.stdout) as {
        provisioned: boolean;
        user_id: string | null;
        last_seq: number;
        last_command: { action: string; seq: number; status: string } | null;
        keys: { signing: string | null };
      };
      expect(s.provisioned).to.equal(true);
      expect(s.user_id).to.equal('alice');
      expect(s.last_seq).to.equal(1);
      expect(s.last_command).to.include({ action: 'request', seq: 1, status: 'applied' });
      expect(s.keys.signing).to.be.a('string').and.not.equal('');
      const h = await cli(['status', '--config', files.configPath]);
      expect(h.code).to.equal(0);
      expect(h.stdout).to.match(/^provisioned: +yes$/m);
      expect(h.stdout).to.match(/^user: +alice$/m);
      expect(h.stdout).to.match(/^last seq: +1$/m);
      expect(h.stdout).to.match(/^last command: +request seq 1: applied OK/m);
    });
  });

  describe('selftest', () => {
    interface Report {
      ok: boolean;
      device_id: string | null;
      checks: { id: string; title: string; required: boolean; status: string; reason: string; fix?: string }[];
    }

    it('a healthy device against a running broker: every check has an id and status, exit 0', async () => {
      const files = await device('selftest-ok');
      await mkdir(files.stateDir, { mode: 0o700 }); // flashing creates it (provisioning/flasher/install-plan.ts)
      const r = await cli(['selftest', '--json', '--config', files.configPath, '--timeout', '5']);
      const report = JSON.parse(r.stdout) as Report;
      expect(r.code, r.stdout).to.equal(0);
      expect(report.ok).to.equal(true);
      expect(report.device_id).to.equal('selftest-ok');
      expect(report.checks.map((c) => c.id)).to.include.members([
        'config',
        'state_dir',
        'keystore',
        'keys',
        'trust',
        'crypto',
        'clock',
        'broker',
        'gpio',
        'node',
      ]);
      for (const c of report.checks) {
        expect(c.id).to.be.a('string').and.not.equal('');
        expect(['pass', 'warn', 'fail', 'skip']).to.include(c.status);
        expect(c.required).to.be.a('boolean');
        if (c.required) expect(c.status, `${c.id}: ${c.reason}`).to.equal('pass');
      }
      expect(report.checks.find((c) => c.id === 'broker')?.reason).to.include(broker.url);
    });

    it('with the broker down: the broker check fails and the exit status is 1', async () => {
      const dead = await startAedes();
      const url = dead.url;
      await dead.stop();
      const files = await device('selftest-down', { brokerUrl: url });
      await mkdir(files.stateDir, { mode: 0o700 });
      const r = await cli(['selftest', '--json', '--config', files.configPath, '--timeout', '3']);
      expect(r.code, r.stdout).to.equal(1);
      const report = JSON.parse(r.stdout) as Report;
      expect(report.ok).to.equal(false);
      const b = report.checks.find((c) => c.id === 'broker');
      expect(b?.status).to.equal('fail');
      expect(b?.reason).to.include(url);
      expect(b?.fix).to.be.a('string');
      // Only the broker fails: the others are unaffected.
      expect(report.checks.filter((c) => c.required && c.status === 'fail').map((c) => c.id)).to.deep.equal(['broker']);
      const h = await cli(['selftest', '--config', files.configPath, '--timeout', '3']);
      expect(h.code).to.equal(1);
      expect(h.stdout).to.match(/^\[FAIL\] broker: /m);
      expect(h.stdout).to.match(/^self-test FAILED: broker$/m);
    });
  });
});
