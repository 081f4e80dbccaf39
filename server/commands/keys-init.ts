/** `provision-server keys init`: create the server's key pairs and the trust anchors devices pin. */
import { join } from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { DEFAULT_SERVER_ID, initServerKeys } from '../keys/server-keys.js';
import { defineCommand } from '../../lib/cli.js';

const initCommand = defineCommand({
  command: 'init',
  describe: 'Create the server signing and encryption keys in DIR and write DIR/trust.jwks',
  builder: (y) =>
    y
      .option('dir', { type: 'string', demandOption: true, describe: 'key directory (created 0700)' })
      .option('server-id', { type: 'string', default: DEFAULT_SERVER_ID, describe: 'the server id (iss of commands, aud of acks)' })
      .option('force', { type: 'boolean', default: false, describe: 'replace existing keys' }),
  handler: async (args) => {
    await initServerKeys(args.dir, { serverId: args.serverId, force: args.force });
    process.stdout.write(`server keys written to ${args.dir}; devices pin ${join(args.dir, 'trust.jwks')}\n`);
  },
});

export const keysCommand: CommandModule = {
  command: 'keys <command>',
  describe: "Manage the server's keys",
  builder: (y: Argv) => y.command(initCommand).demandCommand(1, 'Name a keys command (see --help).'),
  handler: () => undefined,
};
