/**
 * Upgrades end to end on this machine, with every real part: `provision-server`
 * (init with its release key, release add, serve answering chunk requests,
 * send), mosquitto with TLS and the production ACL files, the real agent, and
 * the real root installer (provisioning/upgrade-guard) on a board laid out in
 * a directory (test/helpers/host-board.ts stands in for systemd). The same
 * steps on a booted image with the shipped units: test/board.
 */
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { requireMosquittoOrSkip } from '../server/mosquitto-tls.js';
import { DEVICE, EXITS_AT_START, HOST_TREE, NEVER_CONNECTS, brokenTree, buildHostTree, startUpgradeRig, until, type UpgradeRig } from '../helpers/upgrade-rig.js';

interface SentView {
  status: string;
  code: string | null;
  jti: string;
}

describe('upgrade end to end on a host board: signed release through mosquitto, health-gated, rolled back by itself', function () {
  this.timeout(300_000);
  let rig: UpgradeRig;
  const log = (): string => `${rig.board.log().slice(-6000)}\n--- serve ---\n${rig.serve.log().slice(-3000)}`;

  before(async function () {
    requireMosquittoOrSkip(this);
    rig = await startUpgradeRig();
  });
  after(async () => {
    await rig?.stop();
  });

  async function release(version: string, make: (out: string) => Promise<void>): Promise<void> {
    const tree = join(rig.dir, `tree-${version}`);
    await make(tree);
    const r = await rig.cli(['release', 'add', tree]);
    expect(r.code, r.stderr).to.equal(0);
  }

  async function upgrade(version: string, extra: string[] = []): Promise<SentView> {
    const r = await rig.cli(['send', DEVICE, 'upgrade', '--release', version, '--arch', 'x64', ...extra, '--wait', '--timeout', '150s'], 180_000);
    const view = JSON.parse(r.stdout || '{}') as SentView;
    if (!['applied', 'rolled_back', 'failed', 'rejected'].includes(view.status)) expect.fail(`upgrade to ${version}: exit ${r.code} ${r.stderr}\n${log()}`);
    return view;
  }

  it('v1 -> v2: downloaded in chunks over the broker, installed beside v1, switched, healthy, committed; the board reports v2', async () => {
    await release('0.2.0', (out) => buildHostTree(out, '0.2.0'));
    const sent = await upgrade('0.2.0');
    expect(sent, log()).to.include({ status: 'applied', code: 'OK' });
    expect(await rig.board.current()).to.equal('0.2.0');
    expect((await readdir(rig.board.paths.releases)).sort()).to.deep.equal(['0.1.0', '0.2.0']);
    const seen = await until(
      async () => {
        const d = await rig.device();
        return JSON.stringify(d).includes('"agent_version":"0.2.0"') && d;
      },
      20_000,
      () => `a report with agent_version 0.2.0\n${log()}`,
    );
    expect(JSON.stringify(seen)).to.include('0.2.0');
    // Nothing of the transfer is left in the agent's upgrade directory.
    expect(existsSync(join(rig.board.paths.upgrade, 'staged.json'))).to.equal(false);
    expect(existsSync(join(rig.board.paths.upgrade, 'artifact.tar.gz'))).to.equal(false);
  });

  it('a release that exits at start is rolled back after its restarts: rolled_back E_UPGRADE_CRASH_LOOP, v2 runs again', async () => {
    await release('0.3.0', (out) => brokenTree(out, '0.3.0', EXITS_AT_START));
    const sent = await upgrade('0.3.0');
    expect(sent, log()).to.include({ status: 'rolled_back', code: 'E_UPGRADE_CRASH_LOOP' });
    expect(await rig.board.current()).to.equal('0.2.0');
    expect(rig.board.agentRunning).to.equal(true);
    const st = await rig.cli(['send', DEVICE, 'selftest', '--wait', '--timeout', '30s']);
    expect(JSON.parse(st.stdout), st.stderr).to.include({ status: 'applied' });
  });

  it('a release that starts but never connects is rolled back at its deadline: rolled_back E_UPGRADE_NO_CONNECT', async () => {
    await release('0.3.1', (out) => brokenTree(out, '0.3.1', NEVER_CONNECTS));
    const sent = await upgrade('0.3.1', ['--deadline', '30s']);
    expect(sent, log()).to.include({ status: 'rolled_back', code: 'E_UPGRADE_NO_CONNECT' });
    expect(await rig.board.current()).to.equal('0.2.0');
  });

  it('an older release is refused (E_UPGRADE_DOWNGRADE) and a tampered chunk fails the download (E_UPGRADE_CHUNK): nothing on the board changes', async () => {
    const before = (await readdir(rig.board.paths.releases)).sort();
    const v1 = await rig.cli(['release', 'add', HOST_TREE]);
    expect(v1.code, v1.stderr).to.equal(0);
    const down = await upgrade('0.1.0');
    expect(down).to.include({ status: 'rejected', code: 'E_UPGRADE_DOWNGRADE' });
    await release('0.4.0', (out) => buildHostTree(out, '0.4.0'));
    const stored = (await readdir(join(rig.data, 'releases'))).find((d) => d.startsWith('0.4.0'));
    expect(stored).to.be.a('string');
    const artifact = join(rig.data, 'releases', String(stored), 'artifact.tar.gz');
    const bytes = await readFile(artifact);
    bytes[70_000] = (bytes[70_000] ?? 0) ^ 0xff;
    const { writeFile } = await import('node:fs/promises');
    await writeFile(artifact, bytes);
    const sent = await upgrade('0.4.0');
    expect(sent, log()).to.include({ status: 'failed', code: 'E_UPGRADE_CHUNK' });
    expect(await rig.board.current()).to.equal('0.2.0');
    expect((await readdir(rig.board.paths.releases)).sort()).to.deep.equal(before);
    expect(await readdir(rig.board.paths.upgrade).catch(() => [])).to.deep.equal([]);
  });
});
