/**
 * `provision-server send`: seal and publish a command to one device (optionally
 * waiting for its verified ack), or fan out to every device / a user's devices.
 *
 * Exit statuses with --wait: 0 applied, 3 rejected, 4 failed, 5 no ack before
 * the timeout. A fan-out exits 0 when every device applied, else 6.
 */
import { type Action, ACTIONS, CodedError, isAction, isRecord, validateParams } from '../../protocol/index.js';
import { deviceIdFlag } from '../../lib/cli-input.js';
import { prepareCommand, userIdText } from '../command-sender.js';
import { brokerFrom, openDataDir } from '../data-dir.js';
import { parseCommandTtl, parseDuration } from '../duration.js';
import { MAX_SEAL_WORKERS } from '../seal-pool.js';
import { DEFAULT_FANOUT_CONCURRENCY, formatFanoutSummary, progressBar, runFanout } from '../fanout.js';
import { createLogger } from '../../lib/log.js';
import { openSendClient } from '../send-client.js';
import { commandView } from '../views.js';
import { brokerOverride, withBroker, withData } from './common.js';
import { defineCommand } from '../../lib/cli.js';

export const SEND_EXIT = { applied: 0, rejected: 3, failed: 4, timeout: 5, fanoutIncomplete: 6 } as const;

export const sendCommand = defineCommand({
  command: 'send [target] [action]',
  describe: 'Seal and publish a command: send DEVICE ACTION, or fan out with send --all ACTION / send --user UID ACTION',
  builder: (y) =>
    withBroker(withData(y))
      .positional('target', { type: 'string', describe: 'device id (or, with --all/--user, the action)' })
      .positional('action', { type: 'string', describe: `one of ${ACTIONS.join(', ')}` })
      .option('user', {
        type: 'string',
        describe:
          "user id of the command (default: the device's user); with update, a user other than the device's re-binds it (the seed's `update DEVICE USER`); with no device: fan out to this user's devices",
      })
      .option('all', { type: 'boolean', default: false, describe: 'fan out to every registered device' })
      .option('resume', { type: 'string', describe: 'resume a fan-out by its id (skips devices that already answered)' })
      .option('params', { type: 'string', describe: 'params as a JSON object' })
      .option('set', { type: 'string', array: true, describe: 'one param as dotted.key=value (value parsed as JSON when it can be); repeatable' })
      .option('wait', {
        type: 'boolean',
        default: false,
        describe: 'wait for the verified ack; exit 0 applied, 3 rejected, 4 failed, 5 timeout (a fan-out: 0 when every device applied, else 6)',
      })
      .option('timeout', { type: 'string', default: '30s', describe: 'how long to wait for an ack (per device in a fan-out)' })
      .option('ttl', { type: 'string', describe: 'command lifetime: 90 (seconds), 30s, 15m, 24h, 7d (default 5m, at most 7d)' })
      .option('concurrency', { type: 'number', default: DEFAULT_FANOUT_CONCURRENCY, describe: 'fan-out: commands in flight at once' })
      .option('seal-workers', {
        type: 'number',
        default: 0,
        describe: `fan-out: seal in this many worker threads (0-${MAX_SEAL_WORKERS}; 0 = in the main thread, the default: on 2 cores it does not pay)`,
      })
      .option('verbose', { type: 'boolean', default: false, describe: 'log ack handling on stderr' })
      .example('$0 send sensor-0001 update --set sensor.enabled=true \\\n--set sensor.sample_interval_s=30 --wait', '')
      .example('$0 send --user alice rotate --timeout 1m', '')
      .example('# re-bind sal01 to user 1 (the seed: update sal01 1)\n$0 send sal01 update --user 1 --wait', '')
      .example('$0 send --resume 6f1c2a9e-...', ''),
  handler: async (args) => {
    const timeoutMs = parseDuration(args.timeout, '--timeout');
    const ttlSeconds = args.ttl ? parseCommandTtl(args.ttl) : undefined;
    const fanout = args.all || args.resume !== undefined || (args.user !== undefined && args.action === undefined);
    const actionText = fanout && args.action === undefined ? args.target : args.action;
    if (args.resume === undefined && !isAction(actionText)) throw new CodedError('E_USAGE', `name an action: one of ${ACTIONS.join(', ')}`);
    const params = buildParams(args.params, args.set ?? []);
    const data = await openDataDir(args.data);
    const log = args.verbose ? createLogger({ level: 'info', style: 'timestamped' }) : undefined;
    try {
      const broker = brokerFrom(data.config.broker, brokerOverride(args));
      // Everything is checked before the broker is contacted: a bad command never waits on a connection.
      if (fanout) {
        if (args.all && args.user !== undefined) throw new CodedError('E_USAGE', '--all and --user select devices differently: choose one');
        if (!Number.isInteger(args.sealWorkers) || args.sealWorkers < 0 || args.sealWorkers > MAX_SEAL_WORKERS) {
          throw new CodedError('E_USAGE', `--seal-workers must be an integer 0-${MAX_SEAL_WORKERS}`);
        }
        if (args.resume === undefined)
          validateParams(actionText as Action, isRecord(params) && params.user_id !== undefined ? { ...params, user_id: userIdText(params.user_id) } : params);
        const client = await openSendClient(data, broker, { acksOf: 'all', sealWorkers: args.sealWorkers, ...(log ? { log } : {}) });
        try {
          const tty = process.stderr.isTTY;
          const summary = await runFanout({
            registry: data.registry,
            sender: client.sender,
            waiters: client.waiters,
            ...(args.resume !== undefined
              ? { resumeId: args.resume }
              : {
                  create: {
                    action: actionText as Action,
                    params,
                    selector: args.all ? { all: true } : { userId: args.user as string },
                    ...(ttlSeconds ? { ttlSeconds } : {}),
                  },
                }),
            concurrency: args.concurrency,
            timeoutMs,
            ...(tty ? { onProgress: (done: number, total: number) => process.stderr.write(`\r${progressBar(done, total)}`) } : {}),
          });
          if (tty) process.stderr.write('\n');
          process.stdout.write(formatFanoutSummary(summary));
          process.exitCode = summary.counts.applied === summary.total ? 0 : SEND_EXIT.fanoutIncomplete;
        } finally {
          await client.close();
        }
        return;
      }
      const deviceId = args.target;
      if (!deviceId) throw new CodedError('E_USAGE', 'name a device: send DEVICE ACTION (or --all / --user UID for a fan-out)');
      deviceIdFlag('DEVICE')(deviceId);
      const request = {
        deviceId,
        action: actionText as Action,
        ...(args.user !== undefined ? { userId: args.user } : {}),
        params,
        ...(ttlSeconds ? { ttlSeconds } : {}),
      };
      prepareCommand(data.registry, data.keys, request);
      const client = await openSendClient(data, broker, { acksOf: args.wait ? [deviceId] : [], ...(log ? { log } : {}) });
      try {
        const command = await client.sender.send(request);
        process.stderr.write(`sent ${command.action} to ${deviceId}: seq ${command.seq}, jti ${command.jti}\n`);
        if (!args.wait) {
          process.stdout.write(`${command.jti}\n`);
          return;
        }
        const acked = await client.waiters.wait(command.jti, timeoutMs);
        if (!acked?.ackStatus) {
          process.stdout.write(`${JSON.stringify(commandView(data.registry.getCommand(command.jti) ?? command), null, 2)}\n`);
          throw new CodedError(
            'E_TIMEOUT',
            `no ack from ${deviceId} within ${args.timeout} (the command stays valid until ${new Date(command.expiresAt).toISOString()})`,
          );
        }
        process.stdout.write(`${JSON.stringify(commandView(acked), null, 2)}\n`);
        process.exitCode = SEND_EXIT[acked.ackStatus];
      } finally {
        await client.close();
      }
    } finally {
      data.registry.close();
    }
  },
});

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
