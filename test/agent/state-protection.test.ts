/**
 * The state file guards replay protection (issue 10, findings 2, 6 and 9),
 * over aedes with the attacker a client replaying captured command bytes:
 * - state.json lost while the keys stay: the agent does not act on those
 *   keys again (E_STATE_LOST, exit 2); with a token it enrolls with new keys,
 *   and the captured commands no longer open;
 * - a torn state.json: exit 2, and the advice is to re-enroll, not to move
 *   the file away and carry on;
 * - a state directory or file another user could have planted: refused like
 *   the key store (exit 2, code and fix);
 * - topic_prefix "a b" is a configuration error (exit 2), not a crash at start.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { chmod, chown, mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { RunningAgent } from '../../agent/agent.js';
import { KeyStore } from '../../agent/store/keystore.js';
import { bufferedLogger } from '../../lib/log.js';
import { AGENT_CLI } from '../helpers/agent-process.js';
import {
  addSuiteDevice,
  exists,
  readDeviceState,
  startRefusal,
  startSuiteAgent,
  stopSuiteAgent,
  useAedesSuite,
  waitFor,
  type DeviceFiles,
} from './agent-fixture.js';
import { agentExitStatus } from '../../agent/commands/exit-statuses.js';

const logs = bufferedLogger('debug');

interface CliResult {
  code: number | string;
  stderr: string;
}

function run(configPath: string, command = 'run', extra: string[] = []): Promise<CliResult & { stdout: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [AGENT_CLI, command, '--config', configPath, ...extra],
      { env: { ...process.env, NOTIFY_SOCKET: '' }, timeout: 20_000 },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number | string; signal?: string }) | null;
        resolve({ code: e ? (typeof e.code === 'number' ? e.code : (e.signal ?? String(e.code))) : 0, stderr, stdout });
      },
    );
  });
}

describe('agent: the state file and replay protection (aedes)', function () {
  this.timeout(30_000);
  const s = useAedesSuite(logs);
  let n = 0;

  async function device(o: { token?: string } = {}): Promise<{ files: DeviceFiles; deviceId: string }> {
    n += 1;
    const deviceId = `statep-${n}`;
    const files = await addSuiteDevice(s, deviceId, o);
    return { files, deviceId };
  }

  async function start(files: DeviceFiles): Promise<RunningAgent> {
    return startSuiteAgent(s, { configPath: files.configPath, log: logs.logger, backoff: { minMs: 50, maxMs: 400 } });
  }

  /** Provisioned for alice, then updated to bob; returns the captured bytes of both commands. */
  async function used(): Promise<{ files: DeviceFiles; deviceId: string; request: string; update: string; jtis: string[] }> {
    const { files, deviceId } = await device();
    const agent = await start(files);
    const request = await s.server.commandCaptured(deviceId, 'request', {}, { userId: 'alice' });
    expect(request.ack.claims.status).to.equal('applied');
    const update = await s.server.commandCaptured(deviceId, 'update', { user_id: 'bob' });
    expect(update.ack.claims.status).to.equal('applied');
    await stopSuiteAgent(s, agent);
    return { files, deviceId, request: request.token, update: update.token, jtis: [request.jti, update.jti] };
  }

  it('state.json lost, keys kept, no token: refuses to start (E_STATE_LOST, exit 2) instead of accepting the old commands again', async function () {
    const { files } = await used();
    await rm(join(files.stateDir, 'state.json'));
    const refused = await startRefusal(s, { configPath: files.configPath, log: logs.logger });
    expect(refused?.code, 'the agent started on keys whose replay state is gone').to.equal('E_STATE_LOST');
    expect(agentExitStatus(refused)).to.equal(2);
    expect(refused?.message).to.match(/re-enroll/);
    const cli = await run(files.configPath);
    expect(cli.code).to.equal(2);
    expect(cli.stderr).to.match(/^sensor-agent: E_STATE_LOST: /);
    const selftest = JSON.parse((await run(files.configPath, 'selftest', ['--json', '--timeout', '3'])).stdout) as {
      checks: { id: string; status: string; reason: string; fix?: string }[];
    };
    const keys = selftest.checks.find((c) => c.id === 'keys');
    expect(keys?.status).to.equal('fail');
    expect(keys?.reason).to.match(/E_STATE_LOST/);
    expect(keys?.fix).to.match(/provision-server bundle/);
    expect(await exists(join(files.stateDir, 'state.json')), 'nothing written').to.equal(false);
  });

  it('state.json lost, keys kept, a new token: enrolls with new keys; the captured commands replayed by another client do not open', async function () {
    const { files, deviceId, request, update, jtis } = await used();
    const oldKids = (await KeyStore.open(files.keystore)).publicKeys().keys.map((k) => k.kid);
    await rm(join(files.stateDir, 'state.json'));
    await writeFile(files.tokenFile, 'tok-again\n', { mode: 0o600 });
    s.server.expectEnrollment(deviceId, 'tok-again', 'carol');
    const agent = await start(files);
    await waitFor(
      'the enrollment to be answered',
      async () => (await exists(join(files.stateDir, 'state.json'))) && (await readDeviceState(files)).provisioned,
      10_000,
    );
    const newKids = (await KeyStore.open(files.keystore)).publicKeys().keys.map((k) => k.kid);
    expect(newKids.some((k) => oldKids.includes(k))).to.equal(false);

    const seen = s.server.acks.length;
    await s.server.publish(deviceId, request);
    await s.server.publish(deviceId, update);
    // A command sealed now (new keys) is processed after them, in order.
    expect((await s.server.command(deviceId, 'selftest')).claims.status).to.equal('applied');
    expect(
      s.server.acks.slice(seen).filter((a) => jtis.includes(a.claims.ref)),
      'acks to the replayed commands',
    ).to.deep.equal([]);
    expect((await readDeviceState(files)).user_id).to.equal('carol');
    expect(agent.connected).to.equal(true);
  });

  it('a torn state.json: exit 2 with E_STATE_CORRUPT and advice to re-enroll, not to move it away and go on', async function () {
    const { files } = await used();
    const path = join(files.stateDir, 'state.json');
    const text = await readFile(path, 'utf8');
    await writeFile(path, text.slice(0, Math.floor(text.length / 2)));
    const cli = await run(files.configPath);
    expect(cli.code).to.equal(2);
    expect(cli.stderr).to.match(/^sensor-agent: E_STATE_CORRUPT: .*not valid JSON/);
    expect(cli.stderr).to.match(/re-enroll/);
    expect(cli.stderr).to.not.match(/to start unprovisioned/);
  });

  it('refuses a world-writable state dir, a state file planted by another user, and a symlinked state file (exit 2, code and fix)', async function () {
    const { files } = await used();
    const path = join(files.stateDir, 'state.json');

    await chmod(files.stateDir, 0o777);
    let cli = await run(files.configPath);
    expect([cli.code, cli.stderr]).to.satisfy(
      ([c, e]: [number, string]) => c === 2 && /^sensor-agent: E_STATE_PERMS: state directory .* mode 0777.*fix with: chmod 700/.test(e),
      cli.stderr,
    );
    await chmod(files.stateDir, 0o700);

    // Planted: another user's file in its place (rogue broker, seq 0).
    const planted = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
    await rename(path, `${path}.real`);
    await writeFile(path, JSON.stringify({ ...planted, last_seq: 0, recent: [], settings: { broker: { url: 'mqtt://rogue.example:1883' } } }), { mode: 0o600 });
    await chown(path, 65534, 65534);
    cli = await run(files.configPath);
    expect(cli.code, cli.stderr).to.equal(2);
    expect(cli.stderr).to.match(/^sensor-agent: E_STATE_OWNER: .*owned by uid 65534/);

    await rm(path);
    const elsewhere = join(files.dir, 'elsewhere');
    await mkdir(elsewhere);
    await rename(`${path}.real`, join(elsewhere, 'state.json'));
    await symlink(join(elsewhere, 'state.json'), path);
    cli = await run(files.configPath);
    expect(cli.code, cli.stderr).to.equal(2);
    expect(cli.stderr).to.match(/^sensor-agent: E_STATE_TYPE: .*symbolic link/);
  });

  it('topic_prefix "a b" is refused by the config check (exit 2), not at start with exit 1', async function () {
    const { files } = await device();
    const config = JSON.parse(await readFile(files.configPath, 'utf8')) as Record<string, unknown>;
    await writeFile(files.configPath, JSON.stringify({ ...config, topic_prefix: 'a b' }));
    const cli = await run(files.configPath);
    expect(cli.code, cli.stderr).to.equal(2);
    expect(cli.stderr).to.match(/topic_prefix/);
  });
});
