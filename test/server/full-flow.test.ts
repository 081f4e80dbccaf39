import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { startTlsMosquitto, requireMosquittoOrSkip, type TlsMosquitto } from './mosquitto-tls.js';
import { AGENT_CLI } from '../helpers/agent-process.js';
import { runServerCli } from './run-cli.js';
import { startServeProcess, type ServeProcess } from './run-serve.js';
import { SimFleet, eventually, makeSimDevice } from './sim-fleet.js';
import { skipBecause } from '../helpers/skip.js';

describe('full flow against mosquitto (TLS, client certificates), two serve instances sharing the broker', function () {
  this.timeout(90_000);
  let broker: TlsMosquitto;
  let dir: string;
  let data: string;
  const serves: ServeProcess[] = [];

  before(async function () {
    requireMosquittoOrSkip(this);
    // The production ACLs (provisioning/mosquitto): devices confined to their own topics by CN,
    // the server's identity reading acks/enrollments and writing commands, plus the shared-subscription probe.
    broker = await startTlsMosquitto({
      acl: [
        'user provision-server',
        'topic read provision/+/ack',
        'topic read provision/+/enroll',
        'topic read provision/+/report',
        'topic write provision/+/command',
        'topic readwrite provision/_server/#',
        '',
        'pattern read provision/%u/command',
        'pattern write provision/%u/ack',
        'pattern write provision/%u/enroll',
        'pattern write provision/%u/report',
        '',
      ].join('\n'),
    });
    dir = await mkdtemp(join(tmpdir(), 'provision-flow-'));
    data = join(dir, 'data');
    const srv = await broker.clientCert('provision-server');
    const init = await runServerCli(['init', '--data', data, '--broker', broker.url, '--ca', broker.ca, '--cert', srv.cert, '--key', srv.key]);
    expect(init.code, init.stderr).to.equal(0);
    for (const id of ['a', 'b']) serves.push(await startServeProcess(['--data', data, '--client-id', `serve-${id}`, '--shared', 'auto']));
  });
  after(async () => {
    for (const s of serves) await s.stop();
    await broker?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('token -> bundle -> device enrolls -> server confirms -> update --wait -> rotate -> delete, each ack verified and handled once', async () => {
    for (const s of serves) expect(s.log()).to.match(/subscribe\.shared/);
    const devCert = await broker.clientCert('sensor-0001');
    const out = join(dir, 'bundle');
    const b = await runServerCli([
      'bundle',
      '--data',
      data,
      '--device',
      'sensor-0001',
      '--user',
      'alice',
      '--out',
      out,
      '--client-cert',
      devCert.cert,
      '--client-key',
      devCert.key,
    ]);
    expect(b.code, b.stderr).to.equal(0);
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(config).to.deep.include({
      device_id: 'sensor-0001',
      server_id: 'provision-server',
      topic_prefix: 'provision',
      trust: 'trust.jwks',
      enrollment_token: 'enroll.token',
    });
    expect(config.broker).to.deep.equal({ url: broker.url, ca: 'ca.pem', cert: 'client.crt', key: 'client.key', protocol_version: 5, allow_insecure: false });
    expect((await stat(join(out, 'enroll.token'))).mode & 0o777).to.equal(0o600);
    expect((await stat(join(out, 'client.key'))).mode & 0o777).to.equal(0o600);

    // The board: speaks the protocol from the bundle's files only.
    const fleet = await SimFleet.connect(config.broker.url, {
      trust: JSON.parse(await readFile(join(out, 'trust.jwks'), 'utf8')),
      tls: { ca: await readFile(join(out, 'ca.pem')), cert: await readFile(join(out, 'client.crt')), key: await readFile(join(out, 'client.key')) },
      wildcard: false,
    });
    await fleet.watch('sensor-0001');
    try {
      const device = fleet.add(await makeSimDevice('sensor-0001'));
      await fleet.enroll(device, (await readFile(join(out, 'enroll.token'), 'utf8')).trim());
      await eventually(() => device.provisioned, 15_000, 'request applied on the device');
      const storage = openSqliteStorage(join(data, 'registry.sqlite'));
      try {
        await eventually(async () => (await storage.devices.get('sensor-0001'))?.state === 'provisioned', 10_000, 'server confirmed');
        expect((await storage.devices.require('sensor-0001')).userId).to.equal('alice');

        const update = await runServerCli([
          'send',
          'sensor-0001',
          'update',
          '--data',
          data,
          '--set',
          'sensor.sample_interval_s=30',
          '--wait',
          '--timeout',
          '15s',
        ]);
        expect(update.code, update.stderr).to.equal(0);
        expect(JSON.parse(update.stdout)).to.include({ action: 'update', status: 'applied', code: 'OK', seq: 2 });

        const oldEnc = device.encryption.kid;
        const rotate = await runServerCli(['send', 'sensor-0001', 'rotate', '--data', data, '--wait', '--timeout', '15s']);
        expect(rotate.code, rotate.stderr).to.equal(0);
        await eventually(async () => (await storage.devices.require('sensor-0001')).encryption?.kid === device.encryption.kid, 10_000, 'new keys registered');
        expect(device.encryption.kid).to.not.equal(oldEnc);

        const del = await runServerCli(['send', 'sensor-0001', 'delete', '--data', data, '--wait', '--timeout', '15s']);
        expect(del.code, del.stderr).to.equal(0);
        expect(device.applied.at(-1)?.action).to.equal('delete');
        await eventually(async () => (await storage.devices.require('sensor-0001')).state === 'decommissioned', 10_000, 'decommissioned');

        const after = await runServerCli(['send', 'sensor-0001', 'selftest', '--data', data]);
        expect(after.code).to.equal(1);
        expect(after.stderr).to.match(/E_DECOMMISSIONED/);
      } finally {
        await storage.close();
      }
      // Each of the four acks reached exactly one of the two serve instances; the enrollment too.
      await new Promise((r) => setTimeout(r, 300));
      const logs = serves.map((s) => s.log()).join('');
      expect(logs.match(/ ack\.(recorded|duplicate) /g) ?? []).to.have.length(4);
      expect(logs.match(/ enroll\.accepted /g) ?? []).to.have.length(1);
    } finally {
      await fleet.close();
    }
  });

  it('with the real sensor-agent process: bundle -> enroll -> confirmed -> update --wait -> rotate --wait -> delete --wait, agent exits 10', async function () {
    const agentCli = AGENT_CLI;
    const agentModule = fileURLToPath(new URL('../../agent/agent.js', import.meta.url));
    if (!existsSync(agentModule)) skipBecause(this, 'the agent is not built (dist/agent/agent.js missing: npm run build)');
    const devCert = await broker.clientCert('sensor-0002');
    const out = join(dir, 'bundle-real');
    const b = await runServerCli([
      'bundle',
      '--data',
      data,
      '--device',
      'sensor-0002',
      '--user',
      'bob',
      '--out',
      out,
      '--client-cert',
      devCert.cert,
      '--client-key',
      devCert.key,
      '--gpio',
      'fake',
    ]);
    expect(b.code, b.stderr).to.equal(0);
    const agent = spawn(process.execPath, [agentCli, 'run', '--config', join(out, 'config.json')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let agentLog = '';
    agent.stdout?.on('data', (d: Buffer) => (agentLog += d.toString()));
    agent.stderr?.on('data', (d: Buffer) => (agentLog += d.toString()));
    const exited = new Promise<number | null>((resolve) => agent.once('exit', (code) => resolve(code)));
    try {
      const storage = openSqliteStorage(join(data, 'registry.sqlite'));
      try {
        await eventually(async () => (await storage.devices.get('sensor-0002'))?.state === 'provisioned', 30_000, `agent enrolled and confirmed\n${agentLog}`);
        expect((await storage.devices.require('sensor-0002')).userId).to.equal('bob');
        // Its signed connect report went through the production ACLs: online, with what it runs.
        const seen = await eventually(
          async () => (await storage.devices.require('sensor-0002')).presence.state ?? undefined,
          15_000,
          `a report from the agent\n${agentLog}`,
        );
        expect(seen).to.include({ agent_version: '0.1.0' });
        expect(seen.kids.sig).to.equal((await storage.devices.require('sensor-0002')).signing?.kid);
        const listed = await runServerCli(['device', 'list', '--data', data, '--json']);
        expect((JSON.parse(listed.stdout) as { id: string; presence: string }[]).find((d) => d.id === 'sensor-0002')?.presence).to.equal('online');
        const steps: [string, string[]][] = [
          ['update', ['--set', 'sensor.sample_interval_s=20']],
          ['rotate', []],
          ['delete', []],
        ];
        for (const [action, extra] of steps) {
          const before = await storage.devices.require('sensor-0002');
          const r = await runServerCli(['send', 'sensor-0002', action, '--data', data, ...extra, '--wait', '--timeout', '20s']);
          expect(r.code, `${action}: ${r.stderr}\n${agentLog}`).to.equal(0);
          expect(JSON.parse(r.stdout)).to.include({ action, status: 'applied', code: 'OK' });
          if (action === 'rotate') {
            const after = await eventually(
              async () => {
                const d = await storage.devices.require('sensor-0002');
                return d.encryption?.kid !== before.encryption?.kid && d;
              },
              10_000,
              'new keys registered',
            );
            expect(after.signing?.kid).to.not.equal(before.signing?.kid);
          }
        }
        expect(await exited).to.equal(10);
        await eventually(async () => (await storage.devices.require('sensor-0002')).state === 'decommissioned', 10_000, 'decommissioned');
      } finally {
        await storage.close();
      }
    } finally {
      if (agent.exitCode === null) agent.kill('SIGKILL');
    }
  });
});
