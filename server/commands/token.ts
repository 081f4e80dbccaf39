/** `provision-server token create|list`: one-time enrollment tokens bound to a device and a user (printed once), and their metadata. */
import type { Argv, CommandModule } from 'yargs';
import { deviceIdFlag } from '../../lib/cli-input.js';
import { openDataDir } from '../data-dir.js';
import { parseDuration } from '../duration.js';
import { withData, registryOption } from './common.js';
import { defineCommand } from '../../lib/cli.js';
import { tokenView } from '../http/record-views.js';
import { table } from '../terminal-text.js';

const createCommand = defineCommand({
  command: 'create',
  describe: 'Create a one-time enrollment token bound to DEVICE and USER and print it (it is stored only hashed)',
  builder: (y) =>
    withData(y)
      .option('device', { type: 'string', demandOption: true, coerce: deviceIdFlag('--device'), describe: 'device id the token is bound to' })
      .option('user', { type: 'string', demandOption: true, describe: 'user id the device will be bound to' })
      .option('ttl', { type: 'string', default: '24h', describe: 'lifetime (30m, 24h, 7d)' }),
  handler: async (args) => {
    const ttl = parseDuration(args.ttl, '--ttl');
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const { token, expiresAt } = await data.storage.enrollment.createToken(args.device, args.user, ttl);
      process.stdout.write(`${token}\n`);
      process.stderr.write(`enrollment token for ${args.device} (user ${args.user}), valid until ${new Date(expiresAt).toISOString()}; shown only once\n`);
    } finally {
      await data.storage.close();
    }
  },
});

const listCommand = defineCommand({
  command: 'list',
  describe: 'List enrollment tokens (never their text): device, user, created, expiry, status (valid, used, expired, revoked) and whether the device enrolled',
  builder: (y) =>
    withData(y)
      .option('device', { type: 'string', coerce: deviceIdFlag('--device'), describe: 'only the tokens of this device' })
      .option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
  handler: async (args) => {
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const tokens = await data.storage.enrollment.listTokens(args.device === undefined ? {} : { deviceId: args.device });
      if (args.json) return void process.stdout.write(`${JSON.stringify(tokens.map(tokenView), null, 2)}\n`);
      const iso = (t: number | null): string => (t === null ? '-' : new Date(t).toISOString());
      const rows = [['DEVICE', 'USER', 'CREATED', 'EXPIRES', 'STATUS', 'USED', 'ENROLLED']];
      for (const t of tokens) rows.push([t.deviceId, t.userId, iso(t.createdAt), iso(t.expiresAt), t.status, iso(t.usedAt), iso(t.enrolledAt)]);
      process.stdout.write(table(rows));
    } finally {
      await data.storage.close();
    }
  },
});

export const tokenCommand: CommandModule = {
  command: 'token <command>',
  describe: 'Enrollment tokens',
  builder: (y: Argv) => y.command(createCommand).command(listCommand).demandCommand(1, 'Name a token command (see --help).'),
  handler: () => undefined,
};
