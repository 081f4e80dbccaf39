/**
 * The operator's footguns and gaps of issue 26, through the CLI (child
 * processes on a data directory made by `init`, an embedded broker, no serve):
 * a device and a selector together, delete to many without --yes, explicit
 * device lists, negative durations, the audit, progress, rollout show / list,
 * results of expired rollouts, retry, --abort-min warnings, tokens and
 * devices bundled but not enrolled.
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { joinDashValues } from '../../lib/cli.js';
import { openDataDir, type OpenedData } from '../../server/data-dir.js';
import { toPublicJwk } from '../../protocol/index.js';
import { CommandSender } from '../../server/core/command-sender.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { RolloutEngine } from '../../server/rollouts/engine.js';
import { planRollout, startRollout } from '../../server/rollouts/plan.js';
import { silentLogger } from '../../lib/log.js';
import { runServerCli, useInitializedDataDir } from './run-cli.js';
import { makeSimDevice } from './sim-fleet.js';
import { sqliteDb } from '../helpers/sqlite-db.js';

/** Registers provisioned devices (real keys) for user `bob`. */
async function addDevices(data: OpenedData, ids: string[], tags: string[] = []): Promise<void> {
  for (const id of ids) {
    const d = await makeSimDevice(id);
    await data.storage.devices.add({
      id,
      userId: 'bob',
      origin: 'jwks',
      signing: toPublicJwk(d.signing),
      encryption: toPublicJwk(d.encryption),
      state: 'provisioned',
    });
    if (tags.length) await data.storage.devices.addTags(id, tags);
  }
}

/** Marks a device online (a report just now) or offline (its will), as its signed reports would. */
function setPresence(data: OpenedData, id: string, presence: 'online' | 'offline'): void {
  sqliteDb(data.storage).prepare('UPDATE devices SET presence = ?, last_seen_at = ?, report_interval_s = 60 WHERE id = ?').run(presence, Date.now(), id);
}

describe('provision-server CLI: operator footguns and gaps', function () {
  this.timeout(60_000);
  const ctx = useInitializedDataDir('provision-operator-cli-');
  let data: OpenedData;
  const cli = (...args: string[]) => runServerCli([...args, '--data', ctx.data]);

  /** What a refused command must leave untouched. */
  const snapshot = (): Record<string, unknown> => {
    const db = sqliteDb(data.storage);
    return {
      rollouts: db.prepare('SELECT COUNT(*) AS n FROM rollouts').get(),
      commands: db.prepare('SELECT COUNT(*) AS n FROM commands').get(),
      seqs: db.prepare('SELECT id, next_seq FROM devices ORDER BY id').all(),
      tokens: db.prepare('SELECT COUNT(*) AS n FROM enrollment_tokens').get(),
    };
  };

  before(async () => {
    data = await openDataDir(ctx.data);
    await addDevices(data, ['op-a', 'op-b', 'op-c'], ['fleet']);
  });
  after(async () => {
    await data?.storage.close();
  });

  describe('a device and a selector together, and delete to many', () => {
    it('send DEVICE ACTION with --all / --tag / --devices is refused (exit 2), nothing sent or recorded', async () => {
      const before = snapshot();
      for (const selector of [['--all'], ['--tag', 'fleet'], ['--devices', 'op-b,op-c']]) {
        const r = await cli('send', 'op-a', 'update', '--set', 'sensor.enabled=true', ...selector, '--timeout', '500ms');
        expect(r.code, `${selector.join(' ')}: ${r.stderr}`).to.equal(2);
        expect(r.stderr).to.match(/E_USAGE: a device \(op-a\) and a fleet selector \(--(all|tag|devices)\) together/);
      }
      expect(snapshot()).to.deep.equal(before);
    });

    it('delete to more than one device needs --yes: refused with the count (exit 2 E_CONFIRM), a dry run needs none', async () => {
      const before = snapshot();
      let r = await cli('send', '--all', 'delete', '--timeout', '500ms');
      expect(r.code, r.stderr).to.equal(2);
      expect(r.stderr).to.match(/E_CONFIRM: delete to 3 devices wipes their keys .*nothing sent; confirm with --yes/);
      r = await cli('send', '--tag', 'fleet', 'delete', '--timeout', '500ms');
      expect([r.code, r.stderr.match(/E_CONFIRM: delete to 3 devices/) !== null]).to.deep.equal([2, true]);
      r = await cli('send', '--all', 'delete', '--dry-run');
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.match(/^dry run: delete to 3 device\(s\)/);
      expect(snapshot()).to.deep.equal(before);
      // rotate is not destructive (the board stays reachable under its new keys): no confirmation asked.
      r = await cli('send', '--all', 'rotate', '--dry-run');
      expect(r.code, r.stderr).to.equal(0);
    });
  });

  describe('explicit device lists', () => {
    it('--devices and --devices-from take a list; unknown ids are refused all at once, bad ids as usage; nothing recorded', async () => {
      const before = snapshot();
      let r = await cli('send', '--devices', 'op-a,ghost-1,op-b,ghost-2', 'selftest', '--timeout', '500ms');
      expect(r.code).to.not.equal(0);
      expect(r.stderr).to.match(/E_NO_DEVICE: 2 devices are not registered: ghost-1, ghost-2/);
      r = await cli('send', '--devices', 'op-a,bad id', 'selftest');
      expect(r.code).to.equal(2);
      expect(r.stderr).to.match(/E_USAGE: not a device id: "bad id" \(--devices\)/);
      const file = join(ctx.dir, 'devices.txt');
      await writeFile(file, '# canary boards\nop-a\n\nop-c\nop-a\n');
      r = await cli('send', '--devices-from', file, 'selftest', '--dry-run', '--json');
      expect(r.code, r.stderr).to.equal(0);
      const plan = JSON.parse(r.stdout) as { selector: unknown; targets: { device_id: string }[] };
      expect(plan.selector).to.deep.equal({ devices: ['op-a', 'op-c'] });
      expect(plan.targets.map((t) => t.device_id)).to.deep.equal(['op-a', 'op-c']);
      await writeFile(file, 'op-a\n../etc\n');
      r = await cli('send', '--devices-from', file, 'selftest', '--dry-run');
      expect(r.code).to.equal(2);
      expect(r.stderr).to.match(/not a device id: "\.\.\/etc" \(.*devices\.txt line 2\)/);
      expect(snapshot()).to.deep.equal(before);
    });
  });

  describe('negative durations', () => {
    it('joinDashValues passes -1h, -5m, -30 to the option before them, and nothing after --', () => {
      expect(joinDashValues(['token', 'create', '--ttl', '-1h', '--json'])).to.deep.equal(['token', 'create', '--ttl=-1h', '--json']);
      expect(joinDashValues(['--ttl=-1h', '--x', '-5m', '-h'])).to.deep.equal(['--ttl=-1h', '--x=-5m', '-h']);
      expect(joinDashValues(['--ttl', '-.5', '--', '--a', '-1'])).to.deep.equal(['--ttl=-.5', '--', '--a', '-1']);
      expect(joinDashValues(['--help'])).to.deep.equal(['--help']);
    });

    it('--ttl -1h, --ttl=-1h, --deliver-within -5m, --timeout -1s: the duration error, exit 2, never help; nothing created', async () => {
      const before = snapshot();
      for (const args of [
        ['token', 'create', '--device', 'op-z', '--user', 'u', '--ttl', '-1h'],
        ['token', 'create', '--device', 'op-z', '--user', 'u', '--ttl=-1h'],
        ['send', '--all', 'selftest', '--deliver-within', '-5m'],
        ['send', 'op-a', 'selftest', '--timeout', '-1s'],
        ['bundle', '--device', 'op-z', '--user', 'u', '--out', join(ctx.dir, 'b'), '--ttl', '-7d'],
      ]) {
        const r = await cli(...args);
        expect(r.code, `${args.join(' ')}: ${r.stdout}${r.stderr}`).to.equal(2);
        expect(r.stdout, args.join(' ')).to.equal('');
        expect(r.stderr, args.join(' ')).to.match(/E_USAGE: --(ttl|deliver-within|timeout) "-\d+[hmsd]" must be positive/);
      }
      expect(snapshot()).to.deep.equal(before);
    });
  });

  describe('the audit', () => {
    it('audit filters by device, rollout, action (a dotted prefix), time and limit; --json prints JSON lines', async () => {
      const r0 = await startRollout(data.storage, await planRollout(data.storage, data.keys, { action: 'selftest', selector: { devices: ['op-b'] } }));
      await data.storage.rollouts.setState(r0.id, ['running'], 'cancelled', 'audit test', 'test');
      let r = await cli('audit', '--rollout', r0.id, '--json');
      expect(r.code, r.stderr).to.equal(0);
      const lines = r.stdout
        .trimEnd()
        .split('\n')
        .map((l) => JSON.parse(l) as { event: string; detail: Record<string, unknown>; at: string });
      expect(lines.map((l) => l.event)).to.deep.equal(['rollout.create', 'rollout.cancel']);
      expect(lines[1]?.detail).to.include({ rollout_id: r0.id, reason: 'audit test', by: 'test' });
      r = await cli('audit', '--device', 'op-a', '--action', 'device');
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.match(/^\S+Z device\.add device=op-a origin=jwks/m);
      expect(r.stdout).to.match(/device\.tag\.add device=op-a tags=\["fleet"\]/);
      expect(r.stdout).not.to.match(/op-b/);
      r = await cli('audit', '--action', 'rollout', '--limit', '1', '--json');
      expect((JSON.parse(r.stdout) as { event: string }).event).to.equal('rollout.cancel');
      r = await cli('audit', '--since', '1h', '--action', 'device.add');
      expect(r.stdout.trimEnd().split('\n')).to.have.length(3);
      r = await cli('audit', '--until', '2020-01-01T00:00:00Z');
      expect([r.code, r.stdout]).to.deep.equal([0, '']);
      for (const [args, pattern] of [
        [['--since', 'yesterday'], /--since "yesterday" is neither a duration ago/],
        [['--rollout', 'nope'], /--rollout "nope" is not a rollout id/],
        [['--limit', '0'], /--limit "0" must be a whole number of 1-10000/],
        [['--device', '../x'], /--device "\.\.\/x" is not a device id/],
        [['--action', 'a b'], /--action "a b" is not an audit event name/],
        [['--since', '1h', '--until', '2h'], /--since is after --until/],
      ] as const) {
        r = await cli('audit', ...args);
        expect(r.code, args.join(' ')).to.equal(2);
        expect(r.stderr)
          .to.match(/E_USAGE/)
          .and.to.match(pattern);
      }
      const indexes = (
        sqliteDb(data.storage).prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit'").all() as { name: string }[]
      ).map((i) => i.name);
      expect(indexes).to.include.members(['audit_device', 'audit_event', 'audit_at', 'audit_rollout']);
    });
  });

  describe('rollout show, list and retry', () => {
    it('rollout show tells waiting online (held by the rate) from offline, with the next send and an ETA', async () => {
      setPresence(data, 'op-a', 'online');
      setPresence(data, 'op-b', 'online');
      setPresence(data, 'op-c', 'offline');
      const r0 = await startRollout(
        data.storage,
        await planRollout(data.storage, data.keys, { action: 'selftest', selector: { devices: ['op-a', 'op-b', 'op-c'] }, ratePerMin: 2 }),
      );
      let r = await cli('rollout', 'show', r0.id);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout)
        .to.match(/^waiting, online\s+2$/m)
        .and.to.match(/^waiting, offline\s+1$/m);
      expect(r.stdout).to.match(/^next send: now$/m);
      expect(r.stdout).to.match(/^ETA: the 2 online sent by \S+Z \(in 30s\) at 2\/min; 1 offline: sent when they report in/m);
      r = await cli('rollout', 'show', r0.id, '--json');
      const v = JSON.parse(r.stdout) as { outlook: Record<string, unknown> };
      expect(v.outlook).to.include({ waiting_online: 2, waiting_offline: 1, in_flight: 0 });
      await data.storage.rollouts.setState(r0.id, ['running'], 'paused', 'show test', 'test');
      r = await cli('rollout', 'show', r0.id);
      expect(r.stdout).to.match(/^next send: paused: nothing is sent until rollout resume$/m);
    });

    it('rollout list shows applied / failed / not sent counts, not a DONE fraction, for an aborted rollout', async () => {
      const r0 = await startRollout(data.storage, await planRollout(data.storage, data.keys, { action: 'selftest', selector: { devices: ['op-a', 'op-b'] } }));
      await data.storage.rollouts.setState(r0.id, ['running'], 'aborted', '2 of 2 results failed', 'test');
      const r = await cli('rollout', 'list');
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.match(/^ROLLOUT\s+ACTION\s+TARGETS\s+STATE\s+DEVICES\s+APPLIED\s+FAILED\s+EXPIRED\s+NOT SENT\s+OPEN\s+CREATED\s+DEADLINE$/m);
      expect(r.stdout).to.match(new RegExp(`^${r0.id}\\s+selftest\\s+2 named devices\\s+aborted\\s+2\\s+0\\s+0\\s+0\\s+2\\s+0\\s`, 'm'));
      expect(r.stdout).not.to.match(/\b2\/2\b/);
    });

    it('rollout retry: a new rollout over the targets that did not apply, recorded as a retry; running refused; delete to many needs --yes', async () => {
      const orig = await startRollout(
        data.storage,
        await planRollout(data.storage, data.keys, {
          action: 'update',
          params: { sensor: { enabled: true } },
          selector: { devices: ['op-a', 'op-b', 'op-c'] },
          ratePerMin: 7,
          deliverWithinMs: 3_600_000,
        }),
      );
      let r = await cli('rollout', 'retry', orig.id);
      expect(r.code).to.equal(2);
      expect(r.stderr).to.match(/E_ROLLOUT_STATE: rollout .* is running: .*cancel it first/);
      // op-a applied, the others cancelled with the rollout.
      await data.storage.rollouts.move(orig.id, 'op-a', ['pending'], 'applied');
      await data.storage.rollouts.setState(orig.id, ['running'], 'cancelled', 'retry test', 'test');
      r = await cli('rollout', 'retry', orig.id, '--dry-run');
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.match(
        /^retry of rollout .*\ndry run: update to 2 device\(s\) \(retry of \S+ \(rejected, failed, rolled_back, expired, cancelled, not sent\)\)/,
      );
      // --json: the same members as the HTTP API's dry run.
      r = await cli('rollout', 'retry', orig.id, '--dry-run', '--json');
      expect(r.code, r.stderr).to.equal(0);
      const dry = JSON.parse(r.stdout) as Record<string, unknown>;
      expect(dry).to.include({ dry_run: true, retry_of: orig.id, in_flight_left_out: 0, removed_left_out: 0 });
      expect(dry.warnings).to.deep.equal([]);
      r = await cli('rollout', 'retry', orig.id, '--detach', '--deliver-within', '2h');
      expect(r.code, r.stderr).to.equal(0);
      const id = /^rollout (\S+): running \(retry of/.exec(r.stdout)?.[1] as string;
      const retry = await data.storage.rollouts.require(id);
      expect(retry).to.include({ retryOf: orig.id, action: 'update', ratePerMin: 7, ttlSeconds: orig.ttlSeconds });
      expect(retry.params).to.deep.equal({ sensor: { enabled: true } });
      expect(retry.selector).to.deep.equal({ retryOf: orig.id, states: ['rejected', 'failed', 'rolled_back', 'expired', 'cancelled', 'not sent'] });
      expect((await data.storage.rollouts.targets(id)).map((t) => t.deviceId)).to.deep.equal(['op-b', 'op-c']);
      expect(retry.deadlineAt - retry.createdAt).to.be.closeTo(7_200_000, 5000);
      expect((await data.storage.audit.log({ limit: 5 })).find((a) => a.event === 'rollout.retry')?.detail).to.include({
        rollout_id: id,
        retry_of: orig.id,
        devices: 2,
      });
      r = await cli('rollout', 'show', id);
      expect(r.stdout).to.match(new RegExp(`^retry of rollout ${orig.id}$`, 'm'));
      await data.storage.rollouts.setState(id, ['running'], 'cancelled', 'retry test', 'test');

      const del = await startRollout(data.storage, await planRollout(data.storage, data.keys, { action: 'delete', selector: { devices: ['op-b', 'op-c'] } }));
      await data.storage.rollouts.setState(del.id, ['running'], 'cancelled', 'retry test', 'test');
      const before = snapshot();
      r = await cli('rollout', 'retry', del.id, '--detach');
      expect(r.code).to.equal(2);
      expect(r.stderr).to.match(/E_CONFIRM: delete to 2 devices/);
      expect(snapshot()).to.deep.equal(before);
    });
  });

  describe('warnings and progress', () => {
    it('--abort-min above the target count is warned about in the dry run and at creation', async () => {
      let r = await cli('send', '--devices', 'op-a,op-b', 'selftest', '--abort-when', '10%', '--dry-run');
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stderr).to.match(/^warning: the abort rule needs 10 results .* but the rollout has 2 target\(s\): it can never trip/m);
      r = await cli('send', '--devices', 'op-a,op-b', 'selftest', '--abort-when', '10%', '--abort-min', '2', '--dry-run');
      expect(r.stderr).not.to.match(/warning/);
    });

    it('a send that follows a rollout prints progress lines on stderr (counts, rate, ETA) at --progress-interval; creation warns too', async () => {
      sqliteDb(data.storage).prepare("UPDATE devices SET presence = NULL, last_seen_at = NULL WHERE id IN ('op-a', 'op-b')").run();
      const r = await runServerCli(
        ['send', '--devices', 'op-a,op-b', 'selftest', '--abort-when', '50%', '--timeout', '1500ms', '--progress-interval', '300ms', '--data', ctx.data],
        { timeoutMs: 20_000 },
      );
      expect(r.code, r.stderr).to.equal(6);
      expect(r.stderr).to.match(/^warning: the abort rule needs 10 results/m);
      expect(r.stderr).to.match(
        /^rollout \S+: 0\/2 done \(0 applied, 0 rejected, 0 failed, 0 expired, 0 not sent\), 2 in flight, 0 waiting; rate unknown yet; ETA unknown$/m,
      );
    });
  });

  describe('tokens and boards bundled but not enrolled', () => {
    it('token list shows each token (never its text) and whether it was used; device list --pending the boards never enrolled', async () => {
      let r = await cli('token', 'create', '--device', 'bundled-1', '--user', 'carol', '--ttl', '2h');
      expect(r.code, r.stderr).to.equal(0);
      const token = r.stdout.trim();
      expect((await cli('token', 'create', '--device', 'bundled-2', '--user', 'carol')).code).to.equal(0);
      r = await cli('device', 'list', '--pending');
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.match(/^DEVICE\s+USER\s+REGISTERED\s+TOKEN CREATED\s+TOKEN EXPIRES\s+TOKEN$/m);
      expect(r.stdout)
        .to.match(/^bundled-1\s+carol\s+no\s+\S+Z\s+\S+Z\s+valid$/m)
        .and.to.match(/^bundled-2\s+carol\s+no\s/m);
      r = await cli('token', 'list', '--json');
      const listed = JSON.parse(r.stdout) as Record<string, unknown>[];
      expect(listed.find((t) => t.device_id === 'bundled-1')).to.include({ user_id: 'carol', status: 'valid', used_at: null, enrolled_at: null });
      expect(r.stdout).not.to.include(token);

      const d = await makeSimDevice('bundled-1');
      await data.storage.enrollment.enroll({
        deviceId: 'bundled-1',
        token,
        enrollmentJti: randomUUID(),
        signing: toPublicJwk(d.signing),
        encryption: toPublicJwk(d.encryption),
      });
      r = await cli('device', 'list', '--pending', '--json');
      expect((JSON.parse(r.stdout) as { device_id: string }[]).map((p) => p.device_id)).to.deep.equal(['bundled-2']);
      r = await cli('token', 'list', '--device', 'bundled-1');
      expect(r.stdout).to.match(/^bundled-1\s+carol\s+\S+Z\s+\S+Z\s+used\s+\S+Z\s+\S+Z$/m);
      r = await cli('device', 'list', '--pending', '--tag', 'x');
      expect(r.code).to.equal(2);
    });
  });
});

describe('provision-server CLI: a rollout whose only target expired', function () {
  this.timeout(60_000);
  const ctx = useInitializedDataDir('provision-expired-rollout-');

  it('is shown as expired (rollout show, list, --json result), not completed', async () => {
    const data = await openDataDir(ctx.data);
    let id: string;
    try {
      await addDevices(data, ['exp-1']);
      setPresence(data, 'exp-1', 'offline');
      id = (
        await startRollout(
          data.storage,
          await planRollout(data.storage, data.keys, { action: 'selftest', selector: { devices: ['exp-1'] }, deliverWithinMs: 60_000 }),
        )
      ).id;
      // An engine an hour later: the deadline has passed, the target expires and the rollout finishes.
      const later = openSqliteStorage(data.storage.info.location, { now: () => Date.now() + 3_600_000 });
      try {
        const engine = new RolloutEngine({
          storage: later,
          sender: new CommandSender({ storage: later, keys: data.keys, topicPrefix: data.config.topicPrefix, publish: async () => undefined }),
          log: silentLogger,
          tickMs: 60_000,
        });
        engine.start();
        await engine.idle();
        await engine.stop();
      } finally {
        await later.close();
      }
      expect(await data.storage.rollouts.counts(id)).to.include({ expired: 1, applied: 0 });
    } finally {
      await data.storage.close();
    }
    let r = await runServerCli(['rollout', 'show', id, '--data', ctx.data]);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.match(new RegExp(`^rollout ${id}: selftest to 1 device\\(s\\) \\(device exp-1\\), expired \\(deadline passed`, 'm'));
    expect(r.stdout).to.match(/^result: 1 expired$/m);
    r = await runServerCli(['rollout', 'list', '--data', ctx.data]);
    expect(r.stdout).to.match(new RegExp(`^${id}\\s+selftest\\s+device exp-1\\s+expired\\s+1\\s+0\\s+0\\s+1\\s+0\\s+0\\s`, 'm'));
    r = await runServerCli(['rollout', 'show', id, '--json', '--data', ctx.data]);
    expect(JSON.parse(r.stdout)).to.include({ state: 'completed', result: 'expired' });
  });
});
