/**
 * provisioning/upgrade-guard, the root installer and judge of agent
 * upgrades, run with dash against a board root in a temp directory
 * (UPGRADE_GUARD_ROOT) with two real small trees, a fake restart command and
 * a fake unit state: install -> switch -> commit when the new agent says
 * healthy; rollback on the deadline (with the reason from progress.json), on
 * restarts, on a failed unit, on a fourth start and on a reboot in trial;
 * refusals that change nothing; and a power cut (UPGRADE_GUARD_CRASH_AT) at
 * every step, after which /opt/sensor-agent points at a complete tree and the
 * next pre-start (and install, where the path unit or the boot would run it)
 * finishes or undoes the step. As root, the guard reads and writes the
 * agent's files as the agent's user (`nobody` here).
 */
import { expect } from 'chai';
import { lstat, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  agentWrites,
  exists,
  GUARD,
  linkedVersion,
  makeBoard,
  makeWork,
  NODE_WRAPPER_SHA,
  readJson,
  runGuard,
  stage,
  startGuard,
  waitFor,
  type Board,
  type Staged,
} from './upgrade-guard-fixture.js';
import { isRoot, requireTools } from './tools.js';

const UP = '/var/lib/sensor-agent/upgrade';

describe('deploy/upgrade-guard (provisioning/upgrade-guard)', function () {
  this.timeout(60_000);
  let work: string;
  let n = 0;
  const board = (): Promise<Board> => makeBoard(work, `b${n++}`);

  before(async function () {
    requireTools(this, 'REQUIRE_IMAGE_TOOLS', ['dash', 'tar', 'sha256sum', 'flock', 'setpriv']);
    work = await makeWork();
  });
  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  async function result(b: Board): Promise<Record<string, unknown>> {
    return readJson(b.at(`${UP}/result.json`));
  }
  async function releases(b: Board): Promise<string[]> {
    return (await readdir(b.at('/opt/sensor-agent-releases'))).sort();
  }
  async function noLeftovers(b: Board): Promise<void> {
    expect(
      (await releases(b)).filter((r) => r.startsWith('.')),
      'partial trees',
    ).to.deep.equal([]);
    expect(await exists(b.at('/var/lib/sensor-agent-upgrade/work')), 'work dir').to.equal(false);
    expect(await exists(b.at('/opt/.sensor-agent.link.new')), 'link.new').to.equal(false);
  }
  /** Installs `s` with install running in the background; resolves once the trial runs. */
  async function installToTrial(b: Board, env: Record<string, string> = {}, restarts = 1): Promise<ReturnType<typeof startGuard>> {
    const g = startGuard(b, 'install', env);
    // The trial runs once trial.json is there and the agent was restarted into the new release.
    await waitFor('the trial', async () => ((await exists(b.at(`${UP}/trial.json`))) && (await b.restarts()) >= restarts) || g.child.exitCode !== null);
    return g;
  }

  it('install -> switch -> commit when the new agent is healthy; the previous release kept, older ones pruned', async () => {
    const b = await board();
    const s = await stage(b, { version: '0.2.0' });
    const g = await installToTrial(b);
    expect(await linkedVersion(b)).to.equal('0.2.0');
    expect(await b.restarts()).to.equal(1);
    const trial = await readJson(b.at(`${UP}/trial.json`));
    expect(trial).to.deep.equal({ version: '0.2.0', from: '0.1.0', jti: s.jti, seq: 7, deadline_s: 300 });
    // The staged files are gone; the agent-only release runs on the kept Node.
    expect(await exists(b.at(`${UP}/staged.json`))).to.equal(false);
    expect(await exists(b.at(`${UP}/artifact.tar.gz`))).to.equal(false);
    const tree = b.at('/opt/sensor-agent-releases/0.2.0');
    expect(await readFile(join(tree, 'node/bin/node'), 'utf8')).to.equal(await readFile(b.at('/opt/sensor-agent-releases/0.1.0/node/bin/node'), 'utf8'));
    const st = await stat(join(tree, 'sensor-agent.mjs'));
    expect(st.mode & 0o022, 'not writable by group or others').to.equal(0);
    if (isRoot()) expect(st.uid).to.equal(0);
    if (isRoot()) expect((await stat(b.at(`${UP}/trial.json`))).uid, 'trial.json is the agent user').to.not.equal(0);
    // The agent is judged from outside: a healthy marker of another version changes nothing.
    await agentWrites(b, 'healthy', '0.1.9\n');
    await new Promise((r) => setTimeout(r, 600));
    expect(g.child.exitCode).to.equal(null);
    await agentWrites(b, 'progress.json', '{"version":"0.2.0","started":true,"connected":true,"selftest":true,"reported":true}');
    await agentWrites(b, 'healthy', '0.2.0\n');
    const ran = await g.done;
    expect(ran.code, ran.stderr).to.equal(0);
    expect(await result(b)).to.deep.equal({
      status: 'applied',
      code: 'OK',
      detail: 'running 0.2.0 (previous 0.1.0 kept)',
      version: '0.2.0',
      from: '0.1.0',
      jti: s.jti,
      seq: 7,
    });
    expect(await linkedVersion(b)).to.equal('0.2.0');
    expect(await releases(b)).to.deep.equal(['0.1.0', '0.2.0']);
    for (const f of ['trial.json', 'healthy', 'progress.json']) expect(await exists(b.at(`${UP}/${f}`)), f).to.equal(false);
    expect(await exists(b.at('/var/lib/sensor-agent-upgrade/trial'))).to.equal(false);
    expect(await b.restarts()).to.equal(1);
    await noLeftovers(b);
  });

  it('the snapshot is kept only for the Node it was made with; a release with its own Node uses it', async () => {
    const b = await board();
    await stage(b, { version: '0.2.0', snapshot: true }, { manifest: { binarySha: NODE_WRAPPER_SHA } });
    let g = await installToTrial(b);
    expect(await exists(b.at('/opt/sensor-agent-releases/0.2.0/sensor-agent.blob'))).to.equal(true);
    expect(await exists(b.at('/opt/sensor-agent-releases/0.2.0/snapshot.env'))).to.equal(true);
    await agentWrites(b, 'healthy', '0.2.0');
    expect((await g.done).code).to.equal(0);

    await stage(
      b,
      { version: '0.3.0', snapshot: true, node: true, extra: { 'node/bin/node': '#!/bin/sh\nexit 0\n' } },
      { manifest: { binarySha: 'a'.repeat(64) } },
    );
    // node/bin/node of this release is not a Node; but the CURRENT one (0.2.0) verifies it.
    g = await installToTrial(b);
    const tree = b.at('/opt/sensor-agent-releases/0.3.0');
    expect(await readFile(join(tree, 'node/bin/node'), 'utf8')).to.equal('#!/bin/sh\nexit 0\n');
    expect(await exists(join(tree, 'sensor-agent.blob'))).to.equal(false);
    expect(await exists(join(tree, 'snapshot.env'))).to.equal(false);
    await agentWrites(b, 'healthy', '0.3.0');
    expect((await g.done).code).to.equal(0);
    expect(await releases(b)).to.deep.equal(['0.2.0', '0.3.0']);
  });

  async function rollbackCase(
    b: Board,
    s: Staged,
    act: () => Promise<void>,
    expected: { code: string; detail: RegExp },
    env: Record<string, string> = {},
  ): Promise<void> {
    const g = await installToTrial(b, env);
    expect(await linkedVersion(b)).to.equal(s.version);
    await act();
    const ran = await g.done;
    expect(ran.code, ran.stderr).to.equal(0);
    const r = await result(b);
    expect(r).to.deep.include({ status: 'rolled_back', code: expected.code, version: s.version, from: '0.1.0', jti: s.jti, seq: 7 });
    expect(String(r.detail)).to.match(expected.detail);
    expect(await linkedVersion(b)).to.equal('0.1.0');
    expect(await releases(b)).to.deep.equal(['0.0.9', '0.1.0']);
    expect(await b.restarts(), 'restarted into the switch and back').to.equal(2);
    expect(await exists(b.at(`${UP}/trial.json`))).to.equal(false);
    expect(await exists(b.at('/var/lib/sensor-agent-upgrade/trial'))).to.equal(false);
    await noLeftovers(b);
  }

  it('rolls back at the deadline: E_UPGRADE_NO_CONNECT, E_UPGRADE_SELFTEST, E_UPGRADE_DEADLINE from progress.json', async () => {
    const cases: Array<[string | undefined, string, RegExp]> = [
      ['{"version":"0.2.0","started":true,"connected":false,"selftest":null,"reported":false}', 'E_UPGRADE_NO_CONNECT', /did not connect/],
      ['{"version":"0.2.0","started":true,"connected":true,"selftest":false,"reported":false}', 'E_UPGRADE_SELFTEST', /self-test/],
      ['{"version":"0.2.0","started":true,"connected":true,"selftest":true,"reported":false}', 'E_UPGRADE_DEADLINE', /not healthy within 2s/],
      [undefined, 'E_UPGRADE_DEADLINE', /no progress within 2s/],
    ];
    for (const [progress, code, detail] of cases) {
      const b = await board();
      const s = await stage(b, { version: '0.2.0' }, { deadline: 2 });
      await rollbackCase(b, s, async () => (progress === undefined ? undefined : agentWrites(b, 'progress.json', progress)), { code, detail });
    }
  });

  it('rolls back when the unit restarted 3 times or failed (E_UPGRADE_CRASH_LOOP)', async () => {
    let b = await board();
    await b.setUnit('active', 5);
    let s = await stage(b, { version: '0.2.0' });
    await rollbackCase(
      b,
      s,
      async () => {
        await b.setUnit('activating', 7);
        await new Promise((r) => setTimeout(r, 500));
        await b.setUnit('activating', 8);
      },
      { code: 'E_UPGRADE_CRASH_LOOP', detail: /restarted 3 times/ },
    );
    b = await board();
    s = await stage(b, { version: '0.2.0' });
    await rollbackCase(b, s, () => b.setUnit('failed', 0), { code: 'E_UPGRADE_CRASH_LOOP', detail: /unit failed/ });
  });

  it('pre-start: counts the starts (the 4th rolls back), and a reboot in trial rolls back (E_UPGRADE_REBOOT_LOOP)', async () => {
    for (const reboot of [false, true]) {
      const b = await board();
      const s = await stage(b, { version: '0.2.0' });
      // The install process is killed (it would watch); the trial is recorded, the link switched.
      const g = await installToTrial(b);
      g.child.kill('SIGKILL');
      await g.done;
      if (reboot) {
        const r = await runGuard(b, 'pre-start', { UPGRADE_GUARD_BOOT_ID: 'boot-2' });
        expect(r.code).to.equal(0);
        expect(await result(b)).to.deep.include({ status: 'rolled_back', code: 'E_UPGRADE_REBOOT_LOOP', version: '0.2.0', jti: s.jti });
      } else {
        for (let i = 1; i <= 3; i++) {
          expect((await runGuard(b, 'pre-start')).code).to.equal(0);
          expect(await linkedVersion(b), `start ${i}`).to.equal('0.2.0');
        }
        const r = await runGuard(b, 'pre-start');
        expect(r.code).to.equal(0);
        expect(await result(b)).to.deep.include({ status: 'rolled_back', code: 'E_UPGRADE_CRASH_LOOP', version: '0.2.0', jti: s.jti });
      }
      expect(await linkedVersion(b)).to.equal('0.1.0');
      // pre-start never restarts the agent: it is starting.
      expect(await b.restarts()).to.equal(1);
      await noLeftovers(b);
    }
  });

  it('pre-start commits when the new agent wrote healthy, and always exits 0', async () => {
    const b = await board();
    await stage(b, { version: '0.2.0' });
    const g = await installToTrial(b);
    g.child.kill('SIGKILL');
    await g.done;
    await agentWrites(b, 'healthy', '0.2.0\n');
    expect((await runGuard(b, 'pre-start')).code).to.equal(0);
    expect(await result(b)).to.deep.include({ status: 'applied', version: '0.2.0' });
    expect(await releases(b)).to.deep.equal(['0.1.0', '0.2.0']);
    // Broken surroundings do not fail the unit.
    const broken = await runGuard(b, 'pre-start', { UPGRADE_GUARD_ROOT: join(work, 'no-such-root', 'x') });
    expect(broken.code).to.equal(0);
  });

  describe('refusals: result.json failed E_UPGRADE_INSTALL, the staged files removed, nothing else changed', () => {
    async function refused(b: Board, detail: RegExp, jti: string | null, version: string | null = '0.2.0'): Promise<void> {
      const ran = await runGuard(b, 'install');
      expect(ran.code, ran.stderr).to.equal(0);
      const r = await result(b);
      expect(r).to.deep.include({ status: 'failed', code: 'E_UPGRADE_INSTALL', jti, version, from: '0.1.0' });
      expect(String(r.detail)).to.match(detail);
      expect(await linkedVersion(b)).to.equal('0.1.0');
      expect(await releases(b)).to.deep.equal(['0.0.9', '0.1.0']);
      expect(await exists(b.at(`${UP}/staged.json`))).to.equal(false);
      expect(await exists(b.at(`${UP}/artifact.tar.gz`))).to.equal(false);
      expect(await exists(b.at('/var/lib/sensor-agent-upgrade/trial'))).to.equal(false);
      expect(await b.restarts()).to.equal(0);
      await noLeftovers(b);
    }

    it('a symlinked staged.json (it is never followed, not even read)', async () => {
      const b = await board();
      await stage(b, { version: '0.2.0' });
      const secret = join(work, 'root-only-secret.json');
      await writeFile(secret, '{"version":"0.2.0"}', { mode: 0o600 });
      await rm(b.at(`${UP}/staged.json`));
      await symlink(secret, b.at(`${UP}/staged.json`));
      await refused(b, /staged\.json is a symlink/, null, null);
      expect(await readFile(secret, 'utf8')).to.equal('{"version":"0.2.0"}');
    });

    it('a version that is not x.y.z[-pre], in staged.json or in the signed manifest', async () => {
      let b = await board();
      let s = await stage(b, { version: '0.2.0' }, { stagedVersion: '../../../etc' });
      await refused(b, /names no valid version/, s.jti, null);
      b = await board();
      s = await stage(b, { version: '0.2.0' }, { manifest: { version: '0.2.0/../../x' } });
      await refused(b, /signed manifest names no valid version/, s.jti);
      expect(await exists(join(b.root, 'x'))).to.equal(false);
    });

    it('an archive with ../ or an absolute path', async () => {
      const b = await board();
      await writeFile(join(b.root, '..', 'evil'), 'evil\n');
      const s = await stage(b, { version: '0.2.0' }, { packArgs: ['../evil'] });
      await refused(b, /absolute paths or \.\. components/, s.jti);
    });

    it("an artifact whose SHA-256 is not the manifest's, and a manifest not signed by a pinned key", async () => {
      let b = await board();
      let s = await stage(b, { version: '0.2.0' }, { manifest: { sha256: 'b'.repeat(64) } });
      await refused(b, /SHA-256 [0-9a-f]{64} is not the manifest's b{64}/, s.jti);
      b = await board();
      s = await stage(b, { version: '0.2.0' }, { manifest: { secret: 'another key' } });
      await refused(b, /verify-release refused the release: E_UPGRADE_SIGNATURE: the manifest is not signed/, s.jti);
    });

    it('a release that says it ships Node but has none; no release keys on the board', async () => {
      let b = await board();
      let s = await stage(b, { version: '0.2.0' }, { manifest: { ships: true } });
      await refused(b, /ships Node, but node\/bin\/node is missing/, s.jti);
      b = await board();
      s = await stage(b, { version: '0.2.0' });
      await rm(b.at('/etc/sensor-agent/release.jwks'));
      await refused(b, /no release keys/, s.jti);
    });
  });

  describe('a power cut at every step (UPGRADE_GUARD_CRASH_AT)', () => {
    const INSTALL_STEPS = ['copied', 'verified', 'unpacked', 'renamed', 'trial-recorded', 'switched', 'restarted'] as const;
    for (const step of INSTALL_STEPS) {
      it(`${step}: the link points at a complete tree; pre-start and install finish the upgrade`, async () => {
        const b = await board();
        const s = await stage(b, { version: '0.2.0' });
        const crashed = await runGuard(b, 'install', { UPGRADE_GUARD_CRASH_AT: step });
        expect(crashed.code, crashed.stderr).to.equal(137);
        expect(crashed.stderr).to.contain(`UPGRADE_GUARD_CRASH_AT=${step}`);
        const before = await linkedVersion(b);
        expect(before).to.equal(['switched', 'restarted'].includes(step) ? '0.2.0' : '0.1.0');

        // The agent starts (a reboot, or systemd restarting it): pre-start.
        expect((await runGuard(b, 'pre-start')).code).to.equal(0);
        const afterPreStart = await linkedVersion(b);
        const recorded = ['trial-recorded', 'switched', 'restarted'].includes(step);
        expect(afterPreStart, 'pre-start finishes a recorded switch').to.equal(recorded ? '0.2.0' : '0.1.0');
        expect(
          (await releases(b)).filter((r) => r.startsWith('.')),
          'partial trees cleaned',
        ).to.deep.equal([]);
        if (recorded) {
          expect(await exists(b.at(`${UP}/staged.json`))).to.equal(false);
          expect(await readJson(b.at(`${UP}/trial.json`))).to.deep.include({ version: '0.2.0', jti: s.jti });
        } else {
          expect(await exists(b.at(`${UP}/staged.json`)), 'still staged: the path unit runs install again').to.equal(true);
        }

        // The path unit (staged.json) or the boot (trial record) runs install: it finishes the upgrade,
        // restarting the agent unless pre-start already started it on the new release.
        const restartsBefore = await b.restarts();
        const g = await installToTrial(b, {}, recorded ? 0 : 1);
        expect((await b.restarts()) - restartsBefore).to.equal(recorded ? 0 : 1);
        expect(await linkedVersion(b)).to.equal('0.2.0');
        await agentWrites(b, 'healthy', '0.2.0');
        const ran = await g.done;
        expect(ran.code, ran.stderr).to.equal(0);
        expect(await result(b)).to.deep.include({ status: 'applied', version: '0.2.0', from: '0.1.0', jti: s.jti, seq: 7 });
        expect(await releases(b)).to.deep.equal(['0.1.0', '0.2.0']);
        await noLeftovers(b);
      });
    }

    it('committing: the link stays on the new tree; pre-start finishes the commit', async () => {
      const b = await board();
      const s = await stage(b, { version: '0.2.0' });
      await agentWrites(b, 'healthy', '0.2.0');
      const crashed = await runGuard(b, 'install', { UPGRADE_GUARD_CRASH_AT: 'committing' });
      expect(crashed.code, crashed.stderr).to.equal(137);
      expect(await linkedVersion(b)).to.equal('0.2.0');
      expect(await exists(b.at(`${UP}/result.json`))).to.equal(false);
      expect((await runGuard(b, 'pre-start')).code).to.equal(0);
      expect(await result(b)).to.deep.include({ status: 'applied', version: '0.2.0', jti: s.jti });
      expect(await linkedVersion(b)).to.equal('0.2.0');
      expect(await exists(b.at('/var/lib/sensor-agent-upgrade/trial'))).to.equal(false);
      expect(await exists(b.at('/var/lib/sensor-agent-upgrade/decision'))).to.equal(false);
      expect(await releases(b)).to.deep.equal(['0.1.0', '0.2.0']);
    });

    it('rolling-back: the link points at a complete tree; pre-start (or install at boot) finishes the rollback', async () => {
      for (const next of ['pre-start', 'install']) {
        const b = await board();
        const s = await stage(b, { version: '0.2.0' }, { deadline: 1 });
        const crashed = await runGuard(b, 'install', { UPGRADE_GUARD_CRASH_AT: 'rolling-back' });
        expect(crashed.code, crashed.stderr).to.equal(137);
        expect(await linkedVersion(b)).to.equal('0.2.0');
        const r = await runGuard(b, next);
        expect(r.code, r.stderr).to.equal(0);
        expect(await result(b)).to.deep.include({ status: 'rolled_back', code: 'E_UPGRADE_DEADLINE', version: '0.2.0', jti: s.jti });
        expect(await linkedVersion(b)).to.equal('0.1.0');
        expect(await releases(b)).to.deep.equal(['0.0.9', '0.1.0']);
        // install restarts the agent into the old release; pre-start needs not (the agent is starting).
        expect(await b.restarts()).to.equal(next === 'install' ? 2 : 1);
        await noLeftovers(b);
      }
    });
  });

  it('is POSIX sh: dash parses it, shellcheck (where installed) finds nothing', async function () {
    const { run } = await import('./upgrade-guard-fixture.js');
    expect((await run('dash', ['-n', GUARD])).code).to.equal(0);
    const mode = (await lstat(GUARD)).mode;
    expect(mode & 0o111, 'executable').to.not.equal(0);
    const { findTool } = await import('./tools.js');
    const shellcheck = findTool('shellcheck');
    if (shellcheck === undefined) return;
    const r = await run(shellcheck, ['-s', 'sh', GUARD]);
    expect(r.stdout + r.stderr).to.equal('');
    expect(r.code).to.equal(0);
  });
});
