/** `provision-server rollout list|show|pause|resume|cancel|retry`: rollouts recorded by `send --all/--user/--tag` or the HTTP API. */
import type { Argv, CommandModule } from 'yargs';
import { CodedError } from '../../protocol/index.js';
import { defineCommand } from '../../lib/cli.js';
import { type BrokerSettings, brokerFrom, type OpenedData, openDataDir } from '../data-dir.js';
import { parseDuration } from '../duration.js';
import { RegistryError } from '../storage/errors.js';
import { confirmCli, followRollout } from './send-rollout.js';
import { planRetry, retryView, startRetry } from '../rollouts/retry.js';
import { rolloutOutlook } from '../rollouts/progress.js';
import { planWarnings } from '../rollouts/warnings.js';
import type { RolloutState } from '../storage/records.js';
import { ROLLOUT_LEASE } from '../rollouts/engine.js';
import { ROLLOUT_CONTROLS } from '../rollouts/controls.js';
import { formatPlan, formatRolloutList, formatRolloutSummary, planView, rolloutView } from '../rollouts/rollout-views.js';
import { brokerOverride, withBroker, withData, registryOption } from './common.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function rolloutId(value: string): string {
  if (!UUID.test(value)) throw new CodedError('E_USAGE', `rollout id "${value}" is not a rollout id (a UUID, as rollout list prints)`);
  return value;
}

const listCommand = defineCommand({
  command: 'list',
  describe: 'List rollouts, newest first',
  builder: (y) =>
    withData(y)
      .option('open', { type: 'boolean', default: false, describe: 'only rollouts not finished' })
      .option('limit', { type: 'number', default: 50, describe: 'at most this many' })
      .option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
  handler: async (args) => {
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const store = data.storage.rollouts;
      const items = [];
      for (const r of await store.list({ limit: args.limit, unfinished: args.open })) items.push({ r, counts: await store.counts(r.id) });
      if (args.json)
        return void process.stdout.write(
          `${JSON.stringify(
            items.map((i) => rolloutView(i.r, i.counts)),
            null,
            2,
          )}\n`,
        );
      process.stdout.write(formatRolloutList(items));
      const holder = await data.storage.leases.holder(ROLLOUT_LEASE);
      if (items.some((i) => i.r.finishedAt === null))
        process.stderr.write(holder ? `driven by ${holder}\n` : 'note: no serve is running: open rollouts wait until provision-server serve runs\n');
    } finally {
      await data.storage.close();
    }
  },
});

const showCommand = defineCommand({
  command: 'show <id>',
  describe:
    'One rollout: state (or result once finished), counts, rate, deadline, what waits (online held by the rate or concurrency, offline, in a backoff after E_EXPIRED), the next send, an ETA, and the devices that did not apply',
  builder: (y) =>
    withData(y)
      .positional('id', { type: 'string', demandOption: true, coerce: rolloutId })
      .option('json', { type: 'boolean', default: false, describe: 'print JSON with every target' }),
  handler: async (args) => {
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const store = data.storage.rollouts;
      const r = await store.require(args.id);
      const counts = await store.counts(r.id);
      const outlook = await rolloutOutlook(data.storage, r, counts, data.storage.now());
      if (args.json) return void process.stdout.write(`${JSON.stringify(rolloutView(r, counts, await store.targets(r.id), outlook), null, 2)}\n`);
      process.stdout.write(
        formatRolloutSummary(
          r,
          counts,
          await store.targets(r.id, { states: ['pending', 'sending', 'sent', 'rejected', 'failed', 'rolled_back', 'expired', 'cancelled', 'not sent'] }),
          outlook,
        ),
      );
    } finally {
      await data.storage.close();
    }
  },
});

function control(verb: 'pause' | 'cancel', describe: string, from: RolloutState[], to: RolloutState) {
  return defineCommand({
    command: `${verb} <id>`,
    describe,
    builder: (y) =>
      withData(y)
        .positional('id', { type: 'string', demandOption: true, coerce: rolloutId })
        .option('reason', { type: 'string', default: `${verb} from the CLI`, describe: 'recorded in the audit log' }),
    handler: async (args) => {
      const data = await openDataDir(args.data, registryOption(args));
      try {
        const r = await data.storage.rollouts.setState(args.id, from, to, args.reason, 'cli');
        process.stdout.write(`rollout ${r.id}: ${r.state}\n`);
      } finally {
        await data.storage.close();
      }
    },
  });
}

const resumeCommand = defineCommand({
  command: 'resume <id>',
  describe: 'Resume a paused rollout (or one whose send was stopped) and follow it to the end, as send does: this process drives it while no serve runs',
  builder: (y) =>
    withBroker(withData(y))
      .positional('id', { type: 'string', demandOption: true, coerce: rolloutId })
      .option('detach', { type: 'boolean', default: false, describe: 'only mark it running; a running serve drives it' })
      .option('timeout', { type: 'string', default: '30s', describe: 'how long to wait for each ack before it counts as no answer' })
      .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON' })
      .option('reason', { type: 'string', default: 'resume from the CLI', describe: 'recorded in the audit log' }),
  handler: async (args) => {
    const ackTimeoutMs = parseDuration(args.timeout, '--timeout');
    const data = await openDataDir(args.data, registryOption(args));
    try {
      process.exitCode = await resumeRollout(data, args.id, {
        reason: args.reason,
        detach: args.detach,
        json: args.json,
        ackTimeoutMs,
        broker: () => brokerFrom(data.config.broker, brokerOverride(args)),
      });
    } finally {
      await data.storage.close();
    }
  },
});

/**
 * `rollout resume ID` (and `send --resume ID`, a fan-out of an earlier version being a rollout now):
 * marks the rollout running (E_NO_ROLLOUT unknown, E_ROLLOUT_STATE finished) and, unless `detach`,
 * follows it to the end as send does. Returns the exit status.
 */
export async function resumeRollout(
  data: OpenedData,
  id: string,
  o: { reason: string; detach: boolean; json: boolean; ackTimeoutMs: number; broker: () => BrokerSettings; unknown?: string },
): Promise<number> {
  const store = data.storage.rollouts;
  const r = await store.get(id);
  if (!r) throw new RegistryError('E_NO_ROLLOUT', o.unknown ?? `no rollout with id ${id}`);
  if (r.finishedAt !== null) throw new RegistryError('E_ROLLOUT_STATE', `rollout ${r.id} is finished (${r.state}): nothing to resume`);
  if (r.state !== 'running') await store.setState(r.id, ROLLOUT_CONTROLS.resume.from, ROLLOUT_CONTROLS.resume.to, o.reason, 'cli');
  if (o.detach) {
    process.stdout.write(`rollout ${r.id}: running\n`);
    return 0;
  }
  return followRollout({ data, broker: o.broker(), start: () => r.id, json: o.json, ackTimeoutMs: o.ackTimeoutMs, sealWorkers: 0 });
}

const retryCommand = defineCommand({
  command: 'retry <id>',
  describe:
    'A new rollout (same action, params and options) over the targets of a finished, aborted or cancelled rollout that did not apply (rejected, failed, expired, not sent; devices removed since are left out), followed as send does',
  builder: (y) =>
    withBroker(withData(y))
      .positional('id', { type: 'string', demandOption: true, coerce: rolloutId })
      .option('deliver-within', { type: 'string', describe: "the new rollout's delivery deadline from now (default: the original's duration)" })
      .option('yes', { type: 'boolean', default: false, describe: 'confirm a delete to more than one device' })
      .option('dry-run', { type: 'boolean', default: false, describe: 'show the targets and the plan; record and send nothing' })
      .option('detach', { type: 'boolean', default: false, describe: 'only record it; a running serve drives it' })
      .option('timeout', { type: 'string', default: '30s', describe: 'how long to wait for each ack before it counts as no answer' })
      .option('progress-interval', { type: 'string', default: '5s', describe: 'a progress line on stderr this often while following it; 0 for none' })
      .option('json', { type: 'boolean', default: false, describe: 'print the result (or the plan) as JSON' }),
  handler: async (args) => {
    const ackTimeoutMs = parseDuration(args.timeout, '--timeout');
    const deliverWithinMs = args.deliverWithin === undefined ? undefined : parseDuration(args.deliverWithin, '--deliver-within');
    const progressIntervalMs = args.progressInterval === '0' ? 0 : parseDuration(args.progressInterval, '--progress-interval');
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const rp = await planRetry(data.storage, data.keys, args.id, deliverWithinMs === undefined ? {} : { deliverWithinMs });
      for (const w of planWarnings(rp.plan)) process.stderr.write(`warning: ${w}\n`);
      if (rp.inFlight > 0)
        process.stderr.write(`note: ${rp.inFlight} target(s) of ${args.id} still in flight are not retried (their command may still apply)\n`);
      if (rp.removed > 0) process.stderr.write(`note: ${rp.removed} target(s) of ${args.id} whose device was removed from the registry are left out\n`);
      if (args.dryRun) {
        // The same members as the HTTP API's dry run (POST /rollouts/{id}/retry).
        process.stdout.write(
          args.json
            ? `${JSON.stringify({ ...planView(rp.plan), ...retryView(rp), warnings: planWarnings(rp.plan) }, null, 2)}\n`
            : `retry of rollout ${args.id}\n${formatPlan(rp.plan)}`,
        );
        return;
      }
      await confirmCli(rp.plan.spec.action, rp.plan.summary.targets, args.yes);
      if (args.detach) {
        const r = await startRetry(data.storage, rp);
        return void process.stdout.write(`rollout ${r.id}: running (retry of ${args.id}, ${rp.plan.summary.targets} device(s))\n`);
      }
      const broker = brokerFrom(data.config.broker, brokerOverride(args));
      process.exitCode = await followRollout({
        data,
        broker,
        start: async () => (await startRetry(data.storage, rp)).id,
        json: args.json,
        ackTimeoutMs,
        sealWorkers: 0,
        progressIntervalMs,
      });
    } finally {
      await data.storage.close();
    }
  },
});

export const rolloutCommand: CommandModule = {
  command: 'rollout <command>',
  describe: 'Rollouts: one action to many devices at a rate, with a delivery deadline and an abort rule',
  builder: (y: Argv) =>
    y
      .command(listCommand)
      .command(showCommand)
      .command(
        control(
          'pause',
          'Pause a running rollout: nothing more is sent (commands in flight still count)',
          ROLLOUT_CONTROLS.pause.from,
          ROLLOUT_CONTROLS.pause.to,
        ),
      )
      .command(resumeCommand)
      .command(retryCommand)
      .command(
        control(
          'cancel',
          'Cancel a rollout: what was not sent is cancelled (commands in flight still count)',
          ROLLOUT_CONTROLS.cancel.from,
          ROLLOUT_CONTROLS.cancel.to,
        ),
      )
      .demandCommand(1, 'Name a rollout command (see --help).'),
  handler: () => undefined,
};
