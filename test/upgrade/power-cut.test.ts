/**
 * A power cut (SIGKILL of the agent and the root installer at once) at every
 * step of an upgrade, on a host board (test/helpers/host-board.ts) with the
 * real agent, the real upgrade-guard, serve and mosquitto. The guard's test
 * knob UPGRADE_GUARD_CRASH_AT=<step> makes it die at that step as a power cut
 * would; the download is cut by killing while chunks arrive. After each cut
 * the board boots again and must: run an agent from a complete release (the
 * link never points at a partial tree), still be enrolled (it answers a
 * command), and end the interrupted upgrade with one final ack, applied or
 * rolled back, never applied twice.
 */
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { requireMosquittoOrSkip } from '../server/mosquitto-tls.js';
import { DEVICE, buildHostTree, startUpgradeRig, until, type UpgradeRig } from '../helpers/upgrade-rig.js';

const GUARD_STEPS = ['copied', 'verified', 'unpacked', 'renamed', 'trial-recorded', 'switched', 'restarted', 'committing'] as const;

describe('upgrade: a power cut at every step leaves a board that boots a working, enrolled agent', function () {
  this.timeout(600_000);
  let rig: UpgradeRig;
  let version = 0;
  const log = (): string => `${rig.board.log().slice(-6000)}\n--- serve ---\n${rig.serve.log().slice(-2000)}`;

  before(async function () {
    requireMosquittoOrSkip(this);
    rig = await startUpgradeRig();
  });
  after(async () => {
    await rig?.stop();
  });

  async function nextRelease(): Promise<string> {
    version++;
    const v = `0.5.${version}`;
    const tree = join(rig.dir, `tree-${v}`);
    await buildHostTree(tree, v);
    const r = await rig.cli(['release', 'add', tree]);
    expect(r.code, r.stderr).to.equal(0);
    return v;
  }

  async function afterReboot(sent: Promise<{ stdout: string; stderr: string; code: number | null }>, from: string, to: string): Promise<void> {
    await rig.board.powerCut();
    rig.board.setGuardEnv({});
    await rig.board.boot();
    const r = await sent;
    const view = JSON.parse(r.stdout || '{}') as { status?: string; code?: string };
    expect(['applied', 'rolled_back'], `${JSON.stringify(view)} ${r.stderr}\n${log()}`).to.include(view.status);
    const current = await rig.board.current();
    expect(current).to.equal(view.status === 'applied' ? to : from);
    // The release linked is complete: its agent and its Node are there, and no partial tree is left.
    expect(existsSync(join(rig.board.paths.opt, 'sensor-agent.mjs'))).to.equal(true);
    expect((await readdir(rig.board.paths.releases)).filter((d) => d.startsWith('.'))).to.deep.equal([]);
    const st = await rig.cli(['send', DEVICE, 'selftest', '--wait', '--timeout', '60s'], 90_000);
    expect(JSON.parse(st.stdout || '{}'), `${st.stderr}\n${log()}`).to.include({ status: 'applied' });
    await until(
      async () => !existsSync(join(rig.board.paths.upgrade, 'result.json')) || undefined,
      20_000,
      () => 'result.json acked and removed',
    );
  }

  for (const step of GUARD_STEPS) {
    it(`cut at the guard's step "${step}"`, async () => {
      const from = await rig.board.current();
      const to = await nextRelease();
      rig.board.setGuardEnv({ UPGRADE_GUARD_CRASH_AT: step });
      const sent = rig.cli(['send', DEVICE, 'upgrade', '--release', to, '--deadline', '60s', '--wait', '--timeout', '240s'], 300_000);
      await until(
        () => /exited 137/.test(rig.board.log()) || undefined,
        120_000,
        () => `the guard to stop at ${step}\n${log()}`,
      );
      await afterReboot(sent, from, to);
    });
  }

  it('cut during the download: the next boot resumes from the last verified chunk', async () => {
    const from = await rig.board.current();
    const to = await nextRelease();
    const sent = rig.cli(['send', DEVICE, 'upgrade', '--release', to, '--deadline', '60s', '--wait', '--timeout', '240s'], 300_000);
    await until(
      async () => (await readdir(rig.board.paths.upgrade).catch(() => [] as string[])).some((f) => f.endsWith('.part')) || undefined,
      60_000,
      () => `a partial download\n${log()}`,
    );
    await afterReboot(sent, from, to);
  });
});
