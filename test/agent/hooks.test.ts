/**
 * Hooks contained and checked (issue 10, findings 4 and 8), through a real
 * broker (aedes) and a running agent: the timeout kills the hook's whole
 * process group and the command behind it goes through at once; a hook that
 * leaves a background child is judged on its own exit and the child is
 * killed; a hook another user could have written (world-writable, owned by
 * another user, a symlink, in a group-writable directory) never runs.
 */
import { expect } from 'chai';
import { chmod, chown, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type RunningAgent } from '../../agent/agent.js';
import { bufferedLogger } from '../../lib/log.js';
import { exists, makeDevice, useAedesSuite, waitFor, type DeviceFiles } from './agent-fixture.js';

const logs = bufferedLogger('debug');

/** Running and not a zombie. */
async function alive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

describe('agent hooks: timeout kills the process group, background children do not hold the agent, unsafe hooks never run (aedes)', function () {
  this.timeout(30_000);
  const s = useAedesSuite(logs);
  let n = 0;

  async function provisioned(extra: Record<string, unknown> = {}): Promise<{ files: DeviceFiles; deviceId: string; agent: RunningAgent }> {
    n += 1;
    const deviceId = `hooks-${n}`;
    const files = await makeDevice({ deviceId, brokerUrl: s.broker.url, server: s.party, keys: true, extra });
    s.dirs.push(files.dir);
    await s.server.registerFromKeystore(deviceId, files.keystore);
    const agent = await startAgent({ configPath: files.configPath, log: logs.logger, backoff: { minMs: 50, maxMs: 400 } });
    s.running.add(agent);
    if (!agent.connected) await new Promise<void>((r) => agent.once('ready', () => r()));
    expect((await s.server.command(deviceId, 'request', {}, { userId: 'alice' })).claims.status).to.equal('applied');
    return { files, deviceId, agent };
  }

  async function hook(files: DeviceFiles, action: string, body: string, mode = 0o755): Promise<string> {
    const path = join(files.hooksDir, action);
    await writeFile(path, `#!/bin/sh\n${body}\n`);
    await chmod(path, mode);
    return path;
  }

  it('a hook running `sleep 24` with a 2 s timeout fails promptly, its sleep is killed, and the next command goes through', async function () {
    const { files, deviceId } = await provisioned({ hook_timeout_s: 2 });
    const pidFile = join(files.dir, 'sleep.pid');
    await hook(files, 'update', `sleep 24 &\necho $! > "${pidFile}"\nwait`);
    const t0 = Date.now();
    const ack = await s.server.command(deviceId, 'update', { user_id: 'bob' });
    const took = Date.now() - t0;
    expect([ack.claims.status, ack.claims.code]).to.deep.equal(['failed', 'E_HOOK']);
    expect(ack.claims.detail).to.match(/timed out after 2 s/);
    expect(took, 'ms until the failed ack').to.be.below(6000);
    const sleepPid = Number((await readFile(pidFile, 'utf8')).trim());
    await waitFor("the hook's sleep to be killed", async () => !(await alive(sleepPid)), 3000);
    // Not blocked behind the dead hook.
    expect((await s.server.command(deviceId, 'selftest', {}, {})).claims.status).to.equal('applied');
  });

  it('a hook that starts a background child and exits 0 is reported applied at once, and the child is gone', async function () {
    const { files, deviceId } = await provisioned({ hook_timeout_s: 20 });
    const pidFile = join(files.dir, 'child.pid');
    await hook(files, 'update', `sleep 30 &\necho $! > "${pidFile}"\necho started\nexit 0`);
    const t0 = Date.now();
    const ack = await s.server.command(deviceId, 'update', { sensor: { sample_interval_s: 20 } });
    expect(ack.claims.status, ack.claims.detail).to.equal('applied');
    expect(Date.now() - t0, 'ms until the applied ack').to.be.below(5000);
    const childPid = Number((await readFile(pidFile, 'utf8')).trim());
    await waitFor('the background child to be killed', async () => !(await alive(childPid)), 3000);
    // A failing hook still reports its own status and output.
    await hook(files, 'update', 'echo "refused by policy" >&2\nexit 3');
    const failed = await s.server.command(deviceId, 'update', { sensor: { sample_interval_s: 25 } });
    expect([failed.claims.status, failed.claims.code]).to.deep.equal(['failed', 'E_HOOK']);
    expect(failed.claims.detail).to.equal('hook update failed (exit 3): refused by policy');
  });

  it('never runs a hook other users could have written: world-writable, owned by another user, a symlink, or in a group-writable directory', async function () {
    const { files, deviceId } = await provisioned();
    const ran = join(files.dir, 'ran');
    const body = `touch "${ran}"`;
    let interval = 30;
    const expectRefused = async (what: string, pattern: RegExp): Promise<void> => {
      const ack = await s.server.command(deviceId, 'update', { sensor: { sample_interval_s: interval++ } });
      expect([ack.claims.status, ack.claims.code], what).to.deep.equal(['failed', 'E_HOOK_UNSAFE']);
      expect(ack.claims.detail, what).to.match(pattern);
      expect(await exists(ran), `${what}: the hook ran`).to.equal(false);
    };

    await hook(files, 'update', body, 0o777);
    await expectRefused('world-writable hook', /mode 0777.*chmod go-w/);

    const own = await hook(files, 'update', body, 0o755);
    await chown(own, 65534, 65534);
    await expectRefused('hook owned by nobody', /owned by uid 65534/);

    const elsewhere = join(files.dir, 'elsewhere');
    await mkdir(elsewhere);
    const target = join(elsewhere, 'update');
    await writeFile(target, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    await rm(own);
    await symlink(target, own);
    await expectRefused('symlinked hook', /symbolic link/);

    await rm(own);
    await hook(files, 'update', body, 0o755);
    await chmod(files.hooksDir, 0o775);
    await expectRefused('group-writable hooks directory', /hooks directory .* mode 0775/);

    // Fixed as the message says: it runs.
    await chmod(files.hooksDir, 0o755);
    const ok = await s.server.command(deviceId, 'update', { sensor: { sample_interval_s: 99 } });
    expect(ok.claims.status, ok.claims.detail).to.equal('applied');
    expect(await exists(ran)).to.equal(true);
  });
});
