import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../agent/config.js';
import { KeyStore } from '../../agent/store/keystore.js';
import { writeBundle } from '../../server/provisioning/device-bundle.js';
import { initDataDir, openDataDir, type OpenedData } from '../../server/data-dir.js';
import { AGENT_CLI } from '../helpers/agent-process.js';
import { runServerCli } from './run-cli.js';
import { startFixture } from './server-fixture.js';
import { eventually } from './sim-fleet.js';
import { skipBecause } from '../helpers/skip.js';
import { rejection } from '../helpers/rejection.js';

describe('provision-server bundle', function () {
  this.timeout(30_000);
  let dir: string;
  let data: OpenedData;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'provision-bundle-'));
    await initDataDir(join(dir, 'data'), { broker: { url: 'mqtt://127.0.0.1:1883' } });
    data = await openDataDir(join(dir, 'data'));
  });
  after(async () => {
    await data.storage.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("writes a config the agent's own loader accepts, with the trust anchors and a one-time token bound to the device", async () => {
    const out = join(dir, 'b1');
    const r = await writeBundle(data, { deviceId: 'board-1', userId: 'alice', outDir: out, gpioBackend: 'fake' });
    // release.jwks: the release keys the board pins to verify agent upgrades (the data directory's, public only).
    expect(r.files.sort()).to.deep.equal(['config.json', 'enroll.token', 'release.jwks', 'trust.jwks']);
    expect(await readFile(join(out, 'release.jwks'), 'utf8')).to.equal(await readFile(join(dir, 'data', 'release.jwks'), 'utf8'));
    expect((await stat(out)).mode & 0o777).to.equal(0o700);
    expect((await stat(join(out, 'enroll.token'))).mode & 0o777).to.equal(0o600);
    const config = await loadConfig(join(out, 'config.json'));
    expect(config).to.include({
      device_id: 'board-1',
      server_id: 'provision-server',
      topic_prefix: 'provision',
      keystore: join(out, 'keys'),
      trust: join(out, 'trust.jwks'),
    });
    expect(config.gpio.backend).to.equal('fake');
    expect(JSON.parse(await readFile(join(out, 'trust.jwks'), 'utf8'))).to.deep.equal(data.keys.trust);
    const token = (await readFile(join(out, 'enroll.token'), 'utf8')).trim();
    expect(
      await rejection(
        data.storage.enrollment.enroll({
          deviceId: 'board-2',
          token,
          enrollmentJti: 'x',
          signing: data.keys.trust.keys[0]!,
          encryption: data.keys.trust.keys[1]!,
        }),
      ),
    ).with.property('code', 'E_TOKEN_DEVICE');
    expect(await data.storage.devices.get('board-1')).to.equal(undefined);
  });

  it("defaults to the device broker and CA recorded by init --device-broker, not the server's own listener", async () => {
    const d2 = join(dir, 'data-split');
    const ca = join(dir, 'device-ca.pem');
    await writeFile(ca, '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
    const init = await runServerCli([
      'init',
      '--data',
      d2,
      '--broker',
      'mqtts://broker.example.net:8884',
      '--device-broker',
      'mqtts://broker.example.net:8883',
      '--device-ca',
      ca,
    ]);
    expect(init.code, init.stderr).to.equal(0);
    const bad = await runServerCli(['init', '--data', join(dir, 'data-bad'), '--device-ca', ca]);
    expect(bad.code).to.equal(2);
    expect(bad.stderr).to.match(/--device-ca goes with --device-broker/);
    const out = join(dir, 'b-split');
    const r = await runServerCli(['bundle', '--data', d2, '--device', 'board-split', '--user', 'alice', '--out', out, '--gpio', 'fake']);
    expect(r.code, r.stderr).to.equal(0);
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')) as { broker: { url: string; ca?: string } };
    expect(config.broker.url).to.equal('mqtts://broker.example.net:8883');
    expect(config.broker.ca).to.equal('ca.pem');
    expect(await readFile(join(out, 'ca.pem'), 'utf8')).to.equal(await readFile(ca, 'utf8'));
  });

  it('config.json speaks MQTT 5 by default (the agent announces its maximum packet size); --mqtt-version 4 or init --device-mqtt-version 4 for a 3.1.1-only broker', async () => {
    const version = async (out: string): Promise<unknown> =>
      ((await loadConfig(join(out, 'config.json'))).broker as { protocol_version: unknown }).protocol_version;
    const d = join(dir, 'data');
    let r = await runServerCli(['bundle', '--data', d, '--device', 'board-v5', '--user', 'alice', '--out', join(dir, 'b-v5'), '--gpio', 'fake']);
    expect(r.code, r.stderr).to.equal(0);
    expect(await version(join(dir, 'b-v5'))).to.equal(5);
    r = await runServerCli([
      'bundle',
      '--data',
      d,
      '--device',
      'board-v4',
      '--user',
      'alice',
      '--out',
      join(dir, 'b-v4'),
      '--gpio',
      'fake',
      '--mqtt-version',
      '4',
    ]);
    expect(r.code, r.stderr).to.equal(0);
    expect(await version(join(dir, 'b-v4'))).to.equal(4);
    r = await runServerCli(['bundle', '--data', d, '--device', 'board-v3', '--user', 'alice', '--out', join(dir, 'b-v3'), '--mqtt-version', '3']);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/mqtt-version/);
    expect(existsSync(join(dir, 'b-v3'))).to.equal(false);
    const help = await runServerCli(['bundle', '--help']);
    expect(help.stdout).to.match(/--mqtt-version/);

    const d311 = join(dir, 'data-311');
    expect((await runServerCli(['init', '--data', d311, '--broker', 'mqtt://127.0.0.1:1883', '--device-mqtt-version', '4'])).code).to.equal(0);
    r = await runServerCli(['bundle', '--data', d311, '--device', 'board-311', '--user', 'alice', '--out', join(dir, 'b-311'), '--gpio', 'fake']);
    expect(r.code, r.stderr).to.equal(0);
    expect(await version(join(dir, 'b-311'))).to.equal(4);
    r = await runServerCli([
      'bundle',
      '--data',
      d311,
      '--device',
      'board-311b',
      '--user',
      'alice',
      '--out',
      join(dir, 'b-311b'),
      '--gpio',
      'fake',
      '--mqtt-version',
      '5',
    ]);
    expect(r.code, r.stderr).to.equal(0);
    expect(await version(join(dir, 'b-311b'))).to.equal(5);
  });

  it('--keys-on-host writes a key store the agent opens and registers the device with those keys', async () => {
    const out = join(dir, 'b2');
    const r = await runServerCli([
      'bundle',
      '--data',
      join(dir, 'data'),
      '--device',
      'board-3',
      '--user',
      'bob',
      '--out',
      out,
      '--keys-on-host',
      '--gpio',
      'fake',
    ]);
    expect(r.code, r.stderr).to.equal(0);
    expect((await stat(join(out, 'keys'))).mode & 0o777).to.equal(0o700);
    for (const f of ['signing.jwk', 'encryption.jwk']) expect((await stat(join(out, 'keys', f))).mode & 0o777).to.equal(0o600);
    const store = await KeyStore.open(join(out, 'keys'));
    await data.storage.close();
    data = await openDataDir(join(dir, 'data'));
    const device = await data.storage.devices.require('board-3');
    expect(device).to.include({ userId: 'bob', state: 'registered', origin: 'host-keys' });
    expect(device.signing?.kid).to.equal(store.signingKey?.kid);
    expect(device.encryption?.kid).to.equal(store.encryptionKey?.kid);
  });

  it('refuses a non-empty --out and re-keying a registered device unless --force; nothing changes when it refuses', async () => {
    const cli = (out: string, ...extra: string[]) =>
      runServerCli(['bundle', '--data', join(dir, 'data'), '--device', 'board-3', '--user', 'bob', '--out', out, '--keys-on-host', '--gpio', 'fake', ...extra]);
    const before = (await data.storage.devices.require('board-3')).signing?.kid;
    const oldKey = await readFile(join(dir, 'b2', 'keys', 'signing.jwk'), 'utf8');
    const again = await cli(join(dir, 'b2'));
    expect(again.code).to.equal(2);
    expect(again.stderr).to.match(/E_EXISTS.*b2 is not empty.*--force/);
    expect(await readFile(join(dir, 'b2', 'keys', 'signing.jwk'), 'utf8')).to.equal(oldKey);
    const rekey = await cli(join(dir, 'b2-new'));
    expect(rekey.code).to.equal(2);
    expect(rekey.stderr).to.match(/board-3 is already registered .*cut the board off/);
    await data.storage.close();
    data = await openDataDir(join(dir, 'data'));
    expect((await data.storage.devices.require('board-3')).signing?.kid).to.equal(before);
    const forced = await cli(join(dir, 'b2'), '--force');
    expect(forced.code, forced.stderr).to.equal(0);
    await data.storage.close();
    data = await openDataDir(join(dir, 'data'));
    expect((await data.storage.devices.require('board-3')).signing?.kid).to.not.equal(before);
  });

  it('a --keys-on-host board running the real agent enrolls with the host-made keys and is confirmed', async function () {
    if (!existsSync(fileURLToPath(new URL('../../agent/agent.js', import.meta.url))))
      skipBecause(this, 'the agent is not built (dist/agent/agent.js missing: npm run build)');
    const f = await startFixture();
    try {
      const out = join(f.dir, 'board');
      // The fixture's broker is aedes, which speaks MQTT 3.1.1 only.
      await writeBundle(f.server.data, { deviceId: 'hostkeys-1', userId: 'erin', outDir: out, keysOnHost: true, gpioBackend: 'fake', mqttVersion: 4 });
      const registered = await f.server.data.storage.devices.require('hostkeys-1');
      const agent = spawn(process.execPath, [AGENT_CLI, 'run', '--config', join(out, 'config.json')], { stdio: 'ignore' });
      try {
        const d = await eventually(
          async () => {
            const x = await f.server.data.storage.devices.get('hostkeys-1');
            return x?.state === 'provisioned' && x;
          },
          20_000,
          'provisioned',
        );
        expect(d.userId).to.equal('erin');
        expect(d.signing?.kid).to.equal(registered.signing?.kid);
        expect(d.encryption?.kid).to.equal(registered.encryption?.kid);
      } finally {
        if (agent.exitCode === null && agent.signalCode === null) {
          const exited = new Promise((resolve) => agent.once('exit', resolve));
          agent.kill('SIGTERM');
          await exited;
        }
      }
    } finally {
      await f.close();
    }
  });
});
