/**
 * `sensor-agent` as a process: every input is checked before anything happens,
 * and the exit statuses are those of docs/AGENT.md (2 for bad usage, missing
 * files and key store problems, 1 for a refused message). Includes the
 * seed-era mistakes a newcomer makes: a device id with a space, a key store
 * under /proc, keygen twice, inspecting a command after its `exp`.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { chmod, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KeyStore } from '../../agent/store/keystore.js';
import { sealCommand, toPublicJwk } from '../../protocol/index.js';
import { AGENT_CLI } from '../helpers/agent-process.js';
import { makeParty, type Party } from '../helpers/keys.js';
import { exists, makeDevice, removeDir, SERVER_ID, type DeviceFiles } from './agent-fixture.js';

interface CliResult {
  code: number | string;
  stdout: string;
  stderr: string;
}

function cli(args: string[], timeoutMs = 30_000): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [AGENT_CLI, ...args], { env: { ...process.env, NOTIFY_SOCKET: '' }, timeout: timeoutMs }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: number | string; signal?: string }) | null;
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : (e.signal ?? String(e.code))) : 0, stdout, stderr });
    });
  });
}

describe('sensor-agent CLI: checks before action, exit statuses', function () {
  this.timeout(60_000);
  let server: Party;
  let files: DeviceFiles;
  let trust: string;
  let cmdFile: string;

  const seal = async (deviceId: string, now?: number): Promise<string> => {
    const ks = await KeyStore.open(files.keystore);
    const recipient = ks.encryptionKey;
    if (!recipient) throw new Error('no device key');
    const { token } = await sealCommand(
      {
        serverId: SERVER_ID,
        deviceId,
        action: 'update',
        userId: 'alice',
        params: { sensor: { enabled: true } },
        seq: 1,
        ttlSeconds: 300,
        ...(now ? { now } : {}),
      },
      { signer: server.signing, recipient: toPublicJwk(recipient) },
    );
    return token;
  };

  before(async () => {
    server = await makeParty();
    files = await makeDevice({ deviceId: 'checks-1', brokerUrl: 'mqtt://127.0.0.1:1', server, keys: true });
    trust = join(files.dir, 'trust.jwks');
    cmdFile = join(files.dir, 'cmd.jwe');
    await writeFile(cmdFile, await seal('checks-1'));
  });
  after(async () => {
    if (files) await removeDir(files.dir);
  });

  it('inspect opens a command (exit 0); one for another device is refused (exit 1)', async () => {
    const ok = await cli(['inspect', '--keystore', files.keystore, '--trust', trust, '--device', 'checks-1', cmdFile]);
    expect(ok.code, ok.stderr).to.equal(0);
    expect(JSON.parse(ok.stdout).claims).to.include({ device_id: 'checks-1', action: 'update' });
    const other = await cli(['inspect', '--keystore', files.keystore, '--trust', trust, '--device', 'checks-2', cmdFile]);
    expect(other.code).to.equal(1);
    expect(other.stderr).to.match(/^sensor-agent: E_AUDIENCE: /);
  });

  it('inspect --device with an invalid id is bad usage (exit 2), refused before any file is read', async () => {
    const r = await cli(['inspect', '--keystore', join(files.dir, 'absent'), '--trust', trust, '--device', 'sensor 1/x', cmdFile]);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/^sensor-agent: E_USAGE: --device "sensor 1\/x" is not a device id/);
    expect(r.stderr).to.include("Run 'sensor-agent inspect --help' for usage.");
  });

  it('inspect with a missing key store or trust file exits 2, as every missing file does', async () => {
    const noStore = await cli(['inspect', '--keystore', join(files.dir, 'absent'), '--trust', trust, '--device', 'checks-1', cmdFile]);
    expect(noStore.code).to.equal(2);
    expect(noStore.stderr).to.match(/^sensor-agent: E_KEYSTORE_MISSING: /);
    const noTrust = await cli(['inspect', '--keystore', files.keystore, '--trust', join(files.dir, 'absent.jwks'), '--device', 'checks-1', cmdFile]);
    expect(noTrust.code).to.equal(2);
    expect(noTrust.stderr).to.match(/^sensor-agent: E_NO_FILE: /);
    const noInput = await cli(['inspect', '--keystore', files.keystore, '--trust', trust, '--device', 'checks-1', join(files.dir, 'absent.jwe')]);
    expect(noInput.code).to.equal(2);
  });

  it('a key store others can read exits 2 from inspect and from keygen, as from run', async () => {
    const key = join(files.keystore, 'signing.jwk');
    await chmod(key, 0o644);
    try {
      for (const args of [
        ['inspect', '--keystore', files.keystore, '--trust', trust, '--device', 'checks-1', cmdFile],
        ['keygen', '--keystore', files.keystore],
        ['run', '--config', files.configPath],
      ]) {
        const r = await cli(args);
        expect(r.code, `${args[0]}: ${r.stderr}`).to.equal(2);
        expect(r.stderr).to.include(`sensor-agent: E_KEYSTORE_PERMS: key store file ${key} has mode 0644`);
        expect(r.stderr).to.include(`chmod 600 ${key}`);
      }
    } finally {
      await chmod(key, 0o600);
    }
  });

  it('keygen over existing keys exits 2 and names --force', async () => {
    const before = await readFile(join(files.keystore, 'signing.jwk'), 'utf8');
    const r = await cli(['keygen', '--keystore', files.keystore]);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/^sensor-agent: E_KEYSTORE_EXISTS: .*without --force/);
    expect(await readFile(join(files.keystore, 'signing.jwk'), 'utf8')).to.equal(before);
  });

  it("keygen --keystore under /proc refuses at once with a clear error (Node's recursive mkdir would never return there)", async () => {
    const r = await cli(['keygen', '--keystore', '/proc/sensor-agent-test/keys'], 10_000);
    expect(r.code, r.stderr).to.equal(2);
    expect(r.stderr).to.match(
      /^sensor-agent: E_KEYSTORE_IO: could not create key store directory \/proc\/sensor-agent-test\/keys: .*\/proc\/sensor-agent-test/,
    );
  });

  it('keygen --keystore through a file exits 2 and creates nothing', async () => {
    const file = join(files.dir, 'a-file');
    await writeFile(file, 'x');
    const r = await cli(['keygen', '--keystore', join(file, 'keys')]);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/^sensor-agent: E_KEYSTORE_/);
    expect(await readFile(file, 'utf8')).to.equal('x');
  });

  it('inspect of an expired command says how to read it anyway or get a fresh one; --clock untrusted opens it', async () => {
    const old = join(files.dir, 'old.jwe');
    await writeFile(old, await seal('checks-1', Date.now() - 3600_000));
    const r = await cli(['inspect', '--keystore', files.keystore, '--trust', trust, '--device', 'checks-1', old]);
    expect(r.code).to.equal(1);
    expect(r.stderr).to.match(/^sensor-agent: E_EXPIRED: expired \d+ s ago; .*--clock untrusted.*seal it again/);
    const anyway = await cli(['inspect', '--keystore', files.keystore, '--trust', trust, '--device', 'checks-1', '--clock', 'untrusted', old]);
    expect(anyway.code, anyway.stderr).to.equal(0);
  });

  it('selftest --timeout takes the one duration syntax and refuses anything else with exit 2', async () => {
    const r = await cli(['selftest', '--config', files.configPath, '--timeout', 'soon']);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.include('--timeout "soon" is not a duration like 90 (seconds), 30s, 15m, 24h or 7d');
  });

  it("run --help states the unit's RestartPreventExitStatus and SuccessExitStatus exactly", async () => {
    const unit = await readFile(fileURLToPath(new URL('../../../systemd/sensor-agent.service', import.meta.url)), 'utf8');
    const prevent = /^RestartPreventExitStatus=(.+)$/m.exec(unit)?.[1]?.trim();
    const success = /^SuccessExitStatus=(.+)$/m.exec(unit)?.[1]?.trim();
    expect(prevent).to.equal('2 10');
    const help = (await cli(['run', '--help'])).stdout.replace(/\s+/g, ' ');
    expect(help).to.include(`RestartPreventExitStatus=${prevent}`);
    expect(help).to.include(`SuccessExitStatus=${success}`);
  });

  it('help examples are whole command lines: no example is wrapped in the middle of a command', async () => {
    for (const command of ['keygen', 'inspect', 'run']) {
      const help = (await cli([command, '--help'])).stdout;
      const examples = (help.slice(help.indexOf('Examples:')).split('\n\n')[0]?.split('\n').slice(1) ?? []).filter((l) => l !== '');
      expect(examples, command).to.have.length.above(0);
      for (const line of examples) {
        expect(line.length, `${command}: ${line}`).to.be.at.most(80);
        expect(line, command).to.match(/^ {2}(# |sensor-agent |--)/);
      }
    }
  });

  it('a state directory that cannot be created is refused at once, exit 2 (run exits, not hangs)', async () => {
    const cfg = JSON.parse(await readFile(files.configPath, 'utf8')) as Record<string, unknown>;
    const bad = join(files.dir, 'proc-state.json');
    await writeFile(bad, JSON.stringify({ ...cfg, state_dir: '/proc/sensor-agent-test/state', keystore: files.keystore, trust }));
    const r = await cli(['run', '--config', bad], 15_000);
    expect(r.code, r.stderr).to.equal(2);
    expect(r.stderr).to.match(/^sensor-agent: E_STATE: cannot create the state directory \/proc\/sensor-agent-test\/state: /);
    expect(await exists('/proc/sensor-agent-test')).to.equal(false);
    await rm(bad);
  });
});
