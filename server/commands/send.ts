/**
 * `provision-server send`: seal and publish a command to one device (optionally
 * waiting for its verified ack), or fan out to every device / a user's devices.
 *
 * Exit statuses with --wait: 0 applied, 3 rejected, 4 failed, 7 rolled back (an
 * upgrade whose new release failed its health gate), 5 no ack before the timeout. To many devices (--all, --user, --tag) or with --deliver-within
 * it is a rollout (send-rollout.ts): 0 when every device applied, else 6. `--resume ID` (a fan-out of an earlier
 * version, folded into a rollout with the same id when the registry was opened: schema migration 8) is `rollout resume ID`.
 */
import {
  type Action,
  ACTIONS,
  CodedError,
  DEFAULT_COMMAND_TTL_SECONDS,
  DEFAULT_UPGRADE_DEADLINE_SECONDS,
  isAction,
  isRecord,
  isValidId,
  RELEASE_ARCHES,
} from '../../protocol/index.js';
import { deviceIdFlag, readInput } from '../../lib/cli-input.js';
import { printable } from '../terminal-text.js';
import { prepareCommand } from '../core/command-sender.js';
import type { RolloutSelector } from '../storage/records.js';
import { DEFAULT_ROLLOUT_CONCURRENCY, parsePercent, parseRate } from '../rollouts/plan.js';
import { runRolloutCli } from './send-rollout.js';
import { resumeRollout, rolloutId } from './rollout.js';
import { brokerFrom, openDataDir } from '../data-dir.js';
import { parseCommandTtl, parseDuration } from '../duration.js';
import { MAX_SEAL_WORKERS } from '../core/seal-pool.js';
import { createLogger } from '../../lib/log.js';
import { openSendSession } from '../core/send-session.js';
import { commandView } from '../http/record-views.js';
import { brokerOverride, withBroker, withData, registryOption } from './common.js';
import { defineCommand } from '../../lib/cli.js';

export const SEND_EXIT = { applied: 0, rejected: 3, failed: 4, timeout: 5, fanoutIncomplete: 6, rolled_back: 7 } as const;

export const sendCommand = defineCommand({
  command: 'send [target] [action]',
  describe:
    'Seal and publish a command: send DEVICE ACTION; or a rollout to many devices: send --all ACTION / --user UID ACTION / --tag TAG ACTION / --devices A,B ACTION (rate, ramp, abort rule, delivery deadline; --dry-run shows the plan). A DEVICE and a selector together are refused; delete to more than one device needs --yes',
  builder: (y) =>
    withBroker(withData(y))
      .positional('target', { type: 'string', describe: 'device id (or, with --all/--user/--tag/--devices, the action)' })
      .positional('action', { type: 'string', describe: `one of ${ACTIONS.join(', ')}` })
      .option('user', {
        type: 'string',
        describe:
          "user id of the command (default: the device's user); with update, a user other than the device's re-binds it (the seed's `update DEVICE USER`); with no device: fan out to this user's devices",
      })
      .option('all', { type: 'boolean', default: false, describe: 'a rollout to every registered device' })
      .option('tag', { type: 'string', describe: 'a rollout to the devices with this tag (provision-server device tag add)' })
      .option('devices', { type: 'string', describe: 'a rollout to these devices: a comma-separated list of ids, each registered' })
      .option('devices-from', { type: 'string', describe: "a rollout to the devices listed in this file, one id a line ('-': standard input)" })
      .option('yes', {
        type: 'boolean',
        default: false,
        describe: 'confirm a destructive action (delete) to more than one device; without it such a rollout is refused (at a terminal: type the count)',
      })
      .option('progress-interval', {
        type: 'string',
        default: '5s',
        describe: 'rollout: print a progress line on stderr this often while following it (counts, rate, ETA); 0 for none',
      })
      .option('dry-run', {
        type: 'boolean',
        default: false,
        describe: 'show the targets (counted by online state; the first 100 listed), the params as validated; seal, send and record nothing',
      })
      .option('json', { type: 'boolean', default: false, describe: 'rollout / dry run: print JSON instead of the summary' })
      .option('deliver-within', {
        type: 'string',
        describe:
          'rollout: keep delivering to boards that are offline until this long from now, e.g. 7d (default 24h, at most 30d); with one DEVICE: hold the command for it until then',
      })
      .option('rate', {
        type: 'string',
        describe: 'rollout: at most this many commands a minute: 100/min, 5/s, 600/h (default: no limit, --concurrency in flight)',
      })
      .option('ramp-from', {
        type: 'string',
        describe: 'rollout: start at this rate and multiply it by --ramp-factor each time as many devices applied, up to --rate',
      })
      .option('ramp-factor', { type: 'number', describe: 'rollout: the ramp multiplier, above 1 and at most 10 (default 2)' })
      .option('abort-when', {
        type: 'string',
        describe: 'rollout: abort (no further sends) when this share of results is rejected, failed or rolled back (upgrade), e.g. 10%',
      })
      .option('abort-min', { type: 'number', describe: 'rollout: results needed before --abort-when can trigger (default 10)' })
      .option('resume', {
        type: 'string',
        describe: 'resume a fan-out recorded by an earlier version (by its id): it is a rollout now (same id), so this is provision-server rollout resume ID',
      })
      .option('params', { type: 'string', describe: 'params as a JSON object' })
      .option('set', { type: 'string', array: true, describe: 'one param as dotted.key=value (value parsed as JSON when it can be); repeatable' })
      .option('wait', {
        type: 'boolean',
        default: false,
        describe:
          'wait for the verified ack; exit 0 applied, 3 rejected, 4 failed, 7 rolled back (upgrade), 5 timeout (a rollout always waits: 0 when every device applied, else 6)',
      })
      .option('timeout', {
        type: 'string',
        describe:
          'how long to wait for an ack (per device in a rollout, before it counts as no answer); default 30s, for an upgrade the command lifetime + 15m for the transfer + the deadline',
      })
      .option('ttl', { type: 'string', describe: 'command lifetime: 90 (seconds), 30s, 15m, 24h, 7d (default 5m, at most 7d)' })
      .option('concurrency', { type: 'number', default: DEFAULT_ROLLOUT_CONCURRENCY, describe: 'rollout: commands in flight (sent, unanswered) at once' })
      .option('seal-workers', {
        type: 'number',
        default: 0,
        describe: `rollout: seal in this many worker threads (0-${MAX_SEAL_WORKERS}; 0 = in the main thread, the default: on 2 cores it does not pay)`,
      })
      .option('release', {
        type: 'string',
        describe: 'upgrade: the release VERSION to install (provision-server release list); each board gets the build for its arch',
      })
      .option('arch', {
        choices: RELEASE_ARCHES,
        describe: 'upgrade: the architecture of boards the registry does not know yet (boards report it once they run an agent that can upgrade)',
      })
      .option('deadline', {
        type: 'string',
        describe:
          'upgrade: how long the new release has, once switched to, to start, connect, pass its self-test and report before the board rolls back (30s-1h, default 5m)',
      })
      .option('allow-downgrade', { type: 'boolean', describe: 'upgrade: install even when the release is older than the running one' })
      .option('mirror', {
        type: 'string',
        describe: 'upgrade: an https:// URL the board may download the artifact from instead of the broker (integrity comes from the signed manifest)',
      })
      .option('verbose', { type: 'boolean', default: false, describe: 'log ack handling on stderr' })
      .example('$0 send sensor-0001 update --set sensor.enabled=true \\\n--set sensor.sample_interval_s=30 --wait', '')
      .example('$0 send --user alice rotate --timeout 1m', '')
      .example('$0 send --tag site-a update --set sensor.enabled=true \\\n--rate 60/min --ramp-from 5/min --abort-when 10% --deliver-within 7d', '')
      .example('$0 send --all selftest --dry-run', '')
      .example('$0 send --devices sensor-0001,sensor-0002 selftest', '')
      .example('$0 send --tag retired delete --yes', '')
      .example('# re-bind sal01 to user 1 (the seed: update sal01 1)\n$0 send sal01 update --user 1 --wait', '')
      .example('$0 send --resume 6f1c2a9e-...', '')
      .example('$0 send sensor-0001 upgrade --release 0.3.0 --arch arm64 --wait', '')
      .example('$0 send --tag site-a upgrade --release 0.3.0 \\\n--rate 10/min --abort-when 5%', ''),
  handler: async (args) => {
    const ttlSeconds = args.ttl ? parseCommandTtl(args.ttl) : undefined;
    const listed = args.devices !== undefined || args.devicesFrom !== undefined;
    // A device id and a selector together (`send sensor-01 update --all`) would send to the selector's devices: refused, nothing sent.
    const fleetFlags = [
      args.all ? '--all' : '',
      args.tag !== undefined ? '--tag' : '',
      args.devices !== undefined ? '--devices' : '',
      args.devicesFrom !== undefined ? '--devices-from' : '',
    ].filter(Boolean);
    if (fleetFlags.length > 0 && args.action !== undefined) {
      throw new CodedError(
        'E_USAGE',
        `a device (${args.target}) and a fleet selector (${fleetFlags.join(', ')}) together: send DEVICE ACTION to one device, or send ${fleetFlags[0]} ... ACTION to many; nothing sent`,
      );
    }
    if (args.devices !== undefined && args.devicesFrom !== undefined) throw new CodedError('E_USAGE', '--devices and --devices-from: give the list one way');
    const selectors = [args.all, args.tag !== undefined, listed, args.user !== undefined && args.action === undefined && args.resume === undefined].filter(
      Boolean,
    ).length;
    const many = selectors > 0;
    const progressIntervalMs = args.progressInterval === '0' ? 0 : parseDuration(args.progressInterval, '--progress-interval');
    const fanoutResume = args.resume !== undefined;
    const resumeId = fanoutResume ? rolloutId(args.resume as string) : undefined;
    const actionText = (many || fanoutResume) && args.action === undefined ? args.target : args.action;
    if (!fanoutResume && !isAction(actionText)) throw new CodedError('E_USAGE', `name an action: one of ${ACTIONS.join(', ')}`);
    if (selectors > 1) throw new CodedError('E_USAGE', '--all, --user (without a device), --tag and --devices select devices differently: choose one');
    const deviceList = listed ? await readDeviceList(args.devices, args.devicesFrom) : undefined;
    const params = { ...buildParams(args.params, args.set ?? []), ...upgradeFlags(actionText, args) };
    if (actionText === 'upgrade' && params.release === undefined && params.manifest === undefined)
      throw new CodedError('E_USAGE', 'name the release: send DEVICE upgrade --release VERSION (provision-server release list)');
    // An upgrade's ack comes when the board decided it: after the download, the install and the health gate.
    const timeoutMs =
      args.timeout !== undefined
        ? parseDuration(args.timeout, '--timeout')
        : actionText === 'upgrade'
          ? upgradeWaitMs(params, ttlSeconds)
          : parseDuration('30s', '--timeout');
    const rolloutFlags = {
      ...(args.rate !== undefined ? { ratePerMin: parseRate(args.rate, '--rate') } : {}),
      ...(args.rampFrom !== undefined ? { rampFrom: parseRate(args.rampFrom, '--ramp-from') } : {}),
      ...(args.rampFactor !== undefined ? { rampFactor: args.rampFactor } : {}),
      ...(args.abortWhen !== undefined ? { abortPercent: parsePercent(args.abortWhen) } : {}),
      ...(args.abortMin !== undefined ? { abortMin: args.abortMin } : {}),
      ...(args.deliverWithin !== undefined ? { deliverWithinMs: parseDuration(args.deliverWithin, '--deliver-within') } : {}),
    };
    const rollout = many || args.deliverWithin !== undefined || args.dryRun;
    if (!rollout && Object.keys(rolloutFlags).length > 0)
      throw new CodedError(
        'E_USAGE',
        '--rate, --ramp-*, --abort-* are for a rollout: send --all / --user UID / --tag TAG ACTION (or DEVICE ACTION --deliver-within)',
      );
    if (fanoutResume && (rollout || many))
      throw new CodedError('E_USAGE', '--resume takes a fan-out (now rollout) id alone: send --resume ID, or provision-server rollout resume ID');
    if (!Number.isInteger(args.sealWorkers) || args.sealWorkers < 0 || args.sealWorkers > MAX_SEAL_WORKERS) {
      throw new CodedError('E_USAGE', `--seal-workers must be an integer 0-${MAX_SEAL_WORKERS}`);
    }
    const data = await openDataDir(args.data, registryOption(args));
    const log = args.verbose ? createLogger({ level: 'info', style: 'timestamped' }) : undefined;
    try {
      const broker = brokerFrom(data.config.broker, brokerOverride(args));
      // Everything is checked before the broker is contacted: a bad command never waits on a connection.
      if (rollout) {
        let selector: RolloutSelector;
        if (args.all) selector = { all: true };
        else if (args.tag !== undefined) selector = { tag: args.tag };
        else if (deviceList !== undefined) selector = { devices: deviceList };
        else if (many) selector = { userId: args.user as string };
        else {
          if (!args.target) throw new CodedError('E_USAGE', 'name a device: send DEVICE ACTION (or --all / --user UID / --tag TAG for a rollout)');
          selector = { devices: [deviceIdFlag('DEVICE')(args.target)] };
        }
        process.exitCode = await runRolloutCli({
          data,
          broker,
          request: {
            action: actionText,
            params,
            ...(!many && args.user !== undefined ? { userId: args.user } : {}),
            selector,
            ...(ttlSeconds ? { ttlSeconds } : {}),
            concurrency: args.concurrency,
            ...rolloutFlags,
          },
          dryRun: args.dryRun,
          json: args.json,
          ackTimeoutMs: timeoutMs,
          sealWorkers: args.sealWorkers,
          yes: args.yes,
          progressIntervalMs,
          ...(log ? { log } : {}),
        });
        return;
      }
      if (resumeId !== undefined) {
        // Fan-outs are rollouts now (migration 8 kept each one's id): this is `rollout resume ID`.
        process.stderr.write(`send --resume: fan-outs are rollouts now; this is: provision-server rollout resume ${resumeId}\n`);
        process.exitCode = await resumeRollout(data, resumeId, {
          reason: 'send --resume from the CLI',
          detach: false,
          json: args.json,
          ackTimeoutMs: timeoutMs,
          broker: () => broker,
          unknown: `no fan-out or rollout with id ${resumeId} (provision-server rollout list shows them; a fan-out of an earlier version is a rollout with its id)`,
        });
        return;
      }
      const deviceId = args.target;
      if (!deviceId) throw new CodedError('E_USAGE', 'name a device: send DEVICE ACTION (or --all / --user UID / --tag TAG for a rollout)');
      deviceIdFlag('DEVICE')(deviceId);
      const request = {
        deviceId,
        action: actionText as Action,
        ...(args.user !== undefined ? { userId: args.user } : {}),
        params,
        ...(ttlSeconds ? { ttlSeconds } : {}),
      };
      await prepareCommand(data.storage, data.keys, request);
      const session = await openSendSession(data, broker, { acksOf: args.wait ? [deviceId] : [], ...(log ? { log } : {}) });
      try {
        const { command, acked } = await session.core.send(request, {
          ...(args.wait ? { ackTimeoutMs: timeoutMs } : {}),
          onSent: (c) => {
            process.stderr.write(`sent ${c.action} to ${deviceId}: seq ${c.seq}, jti ${c.jti}\n`);
            if (!args.wait && c.action === 'upgrade')
              process.stderr.write(
                `the board acks when the upgrade is decided (download, install, health gate: up to ${Math.ceil(timeoutMs / 60_000)} min); follow it with: provision-server device show ${deviceId} (or send with --wait)\n`,
              );
          },
        });
        if (!args.wait) {
          process.stdout.write(`${command.jti}\n`);
          return;
        }
        if (!acked?.ackStatus) {
          process.stdout.write(`${JSON.stringify(commandView((await data.storage.commands.get(command.jti)) ?? command), null, 2)}\n`);
          throw new CodedError(
            'E_TIMEOUT',
            `no ack from ${deviceId} within ${Math.round(timeoutMs / 1000)} s (the command stays valid until ${new Date(command.expiresAt).toISOString()})`,
          );
        }
        process.stdout.write(`${JSON.stringify(commandView(acked), null, 2)}\n`);
        process.exitCode = SEND_EXIT[acked.ackStatus];
      } finally {
        await session.close();
      }
    } finally {
      await data.storage.close();
    }
  },
});

/**
 * The ids of --devices (comma-separated) or --devices-from (a file, one id a
 * line; blank lines and `#` comments skipped), each checked (every bad one named,
 * with its line), duplicates dropped. Whether each is registered is checked by the plan.
 */
export async function readDeviceList(list: string | undefined, from: string | undefined): Promise<string[]> {
  const entries: { id: string; where: string }[] = [];
  if (list !== undefined) {
    for (const id of list.split(',')) entries.push({ id: id.trim(), where: '--devices' });
  } else {
    const text = (await readInput(from, 4 * 1024 * 1024)).toString('utf8');
    for (const [i, line] of text.split(/\r?\n/).entries()) {
      const id = line.trim();
      if (id !== '' && !id.startsWith('#')) entries.push({ id, where: `${from === '-' ? 'standard input' : from} line ${i + 1}` });
    }
  }
  const bad = entries.filter((e) => !isValidId(e.id));
  if (bad.length) {
    const shown = bad
      .slice(0, 10)
      .map((e) => `"${printable(e.id)}" (${e.where})`)
      .join(', ');
    throw new CodedError(
      'E_USAGE',
      `not a device id: ${shown}${bad.length > 10 ? `, ... (${bad.length - 10} more)` : ''}; ids are 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit`,
    );
  }
  if (entries.length === 0) throw new CodedError('E_USAGE', `${list !== undefined ? '--devices' : '--devices-from'} names no device`);
  return [...new Set(entries.map((e) => e.id))];
}

/** Beyond the command's lifetime and the health-gate deadline: what `send` allows for the artifact's transfer before it stops waiting. */
export const UPGRADE_TRANSFER_ALLOWANCE_MS = 15 * 60 * 1000;

/** How long `send ... upgrade` waits for the ack by default: the command's lifetime, the transfer allowance, the deadline. */
export function upgradeWaitMs(params: Record<string, unknown>, ttlSeconds: number | undefined): number {
  const deadline = typeof params.deadline_s === 'number' ? params.deadline_s : DEFAULT_UPGRADE_DEADLINE_SECONDS;
  return ((ttlSeconds ?? DEFAULT_COMMAND_TTL_SECONDS) + deadline) * 1000 + UPGRADE_TRANSFER_ALLOWANCE_MS;
}

/** --release, --arch, --deadline, --allow-downgrade, --mirror as upgrade params (refused with another action). */
export function upgradeFlags(
  action: unknown,
  args: {
    release?: string | undefined;
    arch?: string | undefined;
    deadline?: string | undefined;
    allowDowngrade?: boolean | undefined;
    mirror?: string | undefined;
  },
): Record<string, unknown> {
  const given = (['release', 'arch', 'deadline', 'allowDowngrade', 'mirror'] as const).filter((k) => args[k] !== undefined);
  if (action !== 'upgrade') {
    if (given.length) throw new CodedError('E_USAGE', '--release, --arch, --deadline, --allow-downgrade and --mirror are for upgrade');
    return {};
  }
  if (args.release === undefined) {
    if (given.length) throw new CodedError('E_USAGE', '--arch, --deadline, --allow-downgrade and --mirror go with --release VERSION');
    return {};
  }
  return {
    release: args.release,
    ...(args.arch !== undefined ? { arch: args.arch } : {}),
    ...(args.deadline !== undefined ? { deadline_s: Math.round(parseDuration(args.deadline, '--deadline') / 1000) } : {}),
    ...(args.allowDowngrade !== undefined ? { allow_downgrade: args.allowDowngrade } : {}),
    ...(args.mirror !== undefined ? { mirror: args.mirror } : {}),
  };
}

/** --params JSON merged with --set dotted.key=value pairs. */
export function buildParams(json: string | undefined, sets: readonly string[]): Record<string, unknown> {
  let params: Record<string, unknown> = {};
  if (json !== undefined) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(json) as unknown;
    } catch (err) {
      throw new CodedError('E_PARAMS', `--params is not valid JSON: ${(err as Error).message}`);
    }
    if (!isRecord(parsed)) throw new CodedError('E_PARAMS', '--params must be a JSON object');
    params = parsed;
  }
  for (const s of sets) {
    const eq = s.indexOf('=');
    if (eq <= 0) throw new CodedError('E_PARAMS', `--set ${s}: expected key=value`);
    const path = s.slice(0, eq).split('.');
    const text = s.slice(eq + 1);
    let value: unknown = text;
    try {
      value = JSON.parse(text) as unknown;
    } catch {
      /* a plain string */
    }
    let node = params;
    for (const [i, key] of path.entries()) {
      if (!key || key === '__proto__' || key === 'constructor' || key === 'prototype') throw new CodedError('E_PARAMS', `--set ${s}: bad key`);
      if (i === path.length - 1) node[key] = value;
      else {
        const child = node[key];
        if (!isRecord(child)) node[key] = {};
        node = node[key] as Record<string, unknown>;
      }
    }
  }
  return params;
}
