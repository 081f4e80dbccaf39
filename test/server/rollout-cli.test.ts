/**
 * The CLI of tags and rollouts, run as child processes on a data directory made
 * by `init` (no serve: nothing drives the rollouts, so they stay as recorded).
 */
import { expect } from 'chai';
import { openDataDir, type OpenedData } from '../../server/data-dir.js';
import { toPublicJwk } from '../../protocol/index.js';
import { planRollout, startRollout } from '../../server/rollouts/plan.js';
import { runServerCli, useInitializedDataDir } from './run-cli.js';
import { makeSimDevice } from './sim-fleet.js';
import { sqliteDb } from '../helpers/sqlite-db.js';

describe('provision-server CLI: tags and rollouts', function () {
  this.timeout(60_000);
  const ctx = useInitializedDataDir('provision-rollout-cli-');
  let data: OpenedData;
  const cli = (...args: string[]) => runServerCli([...args, '--data', ctx.data]);

  /** What a dry run or a refused send must leave untouched. */
  const snapshot = (): Record<string, unknown> => {
    const db = sqliteDb(data.storage);
    return {
      rollouts: db.prepare('SELECT COUNT(*) AS n FROM rollouts').get(),
      commands: db.prepare('SELECT COUNT(*) AS n FROM commands').get(),
      seqs: db.prepare('SELECT id, next_seq FROM devices ORDER BY id').all(),
      audit: db.prepare("SELECT COUNT(*) AS n FROM audit WHERE event LIKE 'rollout.%'").get(),
    };
  };

  before(async () => {
    data = await openDataDir(ctx.data);
    for (const id of ['cli-a', 'cli-b', 'cli-c']) {
      const d = await makeSimDevice(id);
      await data.storage.devices.add({
        id,
        userId: 'bob',
        origin: 'jwks',
        signing: toPublicJwk(d.signing),
        encryption: toPublicJwk(d.encryption),
        state: 'provisioned',
      });
    }
  });
  after(async () => {
    await data?.storage.close();
  });

  it('device tag add / remove / list and device list --tag; a bad tag exits 2 E_BAD_TAG', async () => {
    let r = await cli('device', 'tag', 'add', 'cli-a', 'site-a', 'canary');
    expect([r.code, r.stdout], r.stderr).to.deep.equal([0, 'cli-a: canary, site-a\n']);
    expect((await cli('device', 'tag', 'add', 'cli-b', 'site-a')).code).to.equal(0);
    r = await cli('device', 'tag', 'remove', 'cli-a', 'canary');
    expect([r.code, r.stdout]).to.deep.equal([0, 'cli-a: site-a\n']);
    r = await cli('device', 'tag', 'list');
    expect(r.code).to.equal(0);
    expect(r.stdout).to.match(/^TAG\s+DEVICES\nsite-a\s+2\n$/);
    r = await cli('device', 'tag', 'list', 'cli-a', '--json');
    expect(JSON.parse(r.stdout)).to.deep.equal(['site-a']);
    r = await cli('device', 'list', '--tag', 'site-a', '--json');
    expect((JSON.parse(r.stdout) as { id: string; tags: string[] }[]).map((d) => [d.id, d.tags])).to.deep.equal([
      ['cli-a', ['site-a']],
      ['cli-b', ['site-a']],
    ]);
    r = await cli('device', 'list', '--tag', 'site-a');
    expect(r.stdout).to.match(/cli-a/).and.to.match(/cli-b/).and.not.to.match(/cli-c/);
    r = await cli('device', 'tag', 'add', 'cli-c', 'bad tag');
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/E_BAD_TAG/);
    expect(await data.storage.devices.tagsOf('cli-c')).to.deep.equal([]);
    r = await cli('device', 'list', '--tag', 'site a');
    expect([r.code, r.stdout]).to.deep.equal([2, '']);
    expect(r.stderr).to.match(/E_BAD_TAG/);
  });

  it('send --tag T update --set ... --dry-run prints the targets and the validated params, recording nothing', async () => {
    const before = snapshot();
    let r = await cli('send', '--tag', 'site-a', 'update', '--set', 'sensor.sample_interval_s=45', '--set', 'user_id=7', '--rate', '5/s', '--dry-run');
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.match(/^dry run: update to 2 device\(s\) \(tag site-a\); nothing sealed, sent or recorded$/m);
    expect(r.stdout).to.include('params (validated): {"user_id":"7","sensor":{"sample_interval_s":45}}');
    expect(r.stdout).to.match(/300\/min/);
    expect(r.stdout).to.match(/^presence: 0 online, 0 offline, 2 never reported$/m);
    expect(r.stdout)
      .to.match(/^cli-a\s+unknown\s+-\s+-\s+ok$/m)
      .and.to.match(/^cli-b\s+unknown/m);
    r = await cli('send', '--all', 'selftest', '--dry-run', '--json');
    expect(r.code, r.stderr).to.equal(0);
    expect((JSON.parse(r.stdout) as { summary: unknown }).summary).to.deep.equal({ targets: 3, online: 0, offline: 0, unknown: 3, not_sendable: 0 });
    r = await cli('send', '--tag', 'site a', 'selftest', '--dry-run');
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/E_BAD_TAG/);
    expect(snapshot()).to.deep.equal(before);
  });

  it('send to many refuses --rate 0, --abort-when 0%, --ramp-factor without --ramp-from: exit 2 with the message, nothing recorded', async () => {
    const before = snapshot();
    for (const [flags, message] of [
      [['--rate', '0'], /--rate "0" must come to a whole number of 1-100000 per minute/],
      [['--abort-when', '0%'], /--abort-when "0%" must be a percentage above 0/],
      [['--ramp-factor', '3'], /ramp factor .* with a ramp start \(--ramp-from\)/],
      [['--rate', '10/min', '--ramp-from', '20/min'], /ramp starts at 20\/min, above the rate of 10\/min/],
    ] as const) {
      const r = await cli('send', '--all', 'selftest', ...flags);
      expect(r.code, `${flags.join(' ')}: ${r.stderr}`).to.equal(2);
      expect(r.stderr)
        .to.match(/E_USAGE/)
        .and.to.match(message);
    }
    expect(snapshot()).to.deep.equal(before);
  });

  it('rollout list / show / pause / cancel: 0, and 2 for E_ROLLOUT_STATE and E_NO_ROLLOUT', async () => {
    const r0 = await startRollout(data.storage, await planRollout(data.storage, data.keys, { action: 'selftest', selector: { tag: 'site-a' } }));
    const id = r0.id;
    let r = await cli('rollout', 'list');
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.match(new RegExp(`^${id}\\s+selftest\\s+tag site-a\\s+running\\s+2\\s+0\\s+0\\s+0\\s+0\\s+2\\s`, 'm'));
    expect(r.stderr).to.match(/no serve is running/);
    r = await cli('rollout', 'list', '--open', '--json');
    expect((JSON.parse(r.stdout) as { id: string }[]).map((x) => x.id)).to.deep.equal([id]);
    r = await cli('rollout', 'show', id);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout)
      .to.match(new RegExp(`^rollout ${id}: selftest to 2 device\\(s\\) \\(tag site-a\\), running`, 'm'))
      .and.to.match(/^waiting, online\s+2$/m);

    const expectExit = async (args: string[], code: number, pattern: RegExp): Promise<void> => {
      const res = await cli(...args);
      expect(res.code, `${args.join(' ')}: ${res.stderr}`).to.equal(code);
      expect(res.code === 0 ? res.stdout : res.stderr).to.match(pattern);
    };
    await expectExit(['rollout', 'pause', id], 0, /: paused$/m);
    await expectExit(['rollout', 'pause', id], 2, /E_ROLLOUT_STATE: rollout .* is paused/);
    await expectExit(['rollout', 'cancel', id], 0, /: cancelled$/m);
    await expectExit(['rollout', 'cancel', id], 2, /E_ROLLOUT_STATE/);
    await expectExit(['rollout', 'resume', id], 2, /E_ROLLOUT_STATE/);
    await expectExit(['rollout', 'show', '00000000-0000-4000-8000-000000000000'], 2, /E_NO_ROLLOUT/);
    await expectExit(['rollout', 'pause', '00000000-0000-4000-8000-000000000000'], 2, /E_NO_ROLLOUT/);
    await expectExit(['rollout', 'show', 'not-an-id'], 2, /E_USAGE/);
    expect((await data.storage.rollouts.require(id)).state).to.equal('cancelled');
    expect(await data.storage.rollouts.counts(id)).to.include({ cancelled: 2, pending: 0 });
    expect(await data.storage.commands.list({ fanoutId: id })).to.have.length(0);
  });

  it('--help of send and rollout names the rollout flags and commands', async () => {
    const send = await runServerCli(['send', '--help']);
    expect(send.code).to.equal(0);
    for (const flag of [
      '--all',
      '--tag',
      '--dry-run',
      '--deliver-within',
      '--rate',
      '--ramp-from',
      '--ramp-factor',
      '--abort-when',
      '--abort-min',
      '--concurrency',
    ]) {
      expect(send.stdout, flag).to.include(flag);
    }
    const rollout = await runServerCli(['rollout', '--help']);
    expect(rollout.code).to.equal(0);
    for (const c of ['list', 'show <id>', 'pause <id>', 'resume <id>', 'cancel <id>']) expect(rollout.stdout, c).to.include(`rollout ${c}`);
    const resume = await runServerCli(['rollout', 'resume', '--help']);
    expect(resume.stdout).to.include('--detach');
  });
});
