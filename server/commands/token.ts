/** `provision-server token create`: a one-time enrollment token bound to a device and a user, printed once. */
import type { Argv, CommandModule } from 'yargs';
import { deviceIdFlag } from '../../lib/cli-input.js';
import { openDataDir } from '../data-dir.js';
import { parseDuration } from '../duration.js';
import { withData } from './common.js';
import { defineCommand } from '../../lib/cli.js';

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
    const data = await openDataDir(args.data);
    try {
      const { token, expiresAt } = data.registry.createToken(args.device, args.user, ttl);
      process.stdout.write(`${token}\n`);
      process.stderr.write(`enrollment token for ${args.device} (user ${args.user}), valid until ${new Date(expiresAt).toISOString()}; shown only once\n`);
    } finally {
      data.registry.close();
    }
  },
});

export const tokenCommand: CommandModule = {
  command: 'token <command>',
  describe: 'Enrollment tokens',
  builder: (y: Argv) => y.command(createCommand).demandCommand(1, 'Name a token command (see --help).'),
  handler: () => undefined,
};
