/** `provision-server keys init`: create the server's key pairs and the trust anchors devices pin. */
import { join } from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { DEFAULT_SERVER_ID, initServerKeys } from '../keys/server-keys.js';
import { defineCommand } from '../../lib/cli.js';
import { CodedError } from '../../protocol/index.js';
import { writeFileAtomic } from '../../lib/durable-file.js';
import { exists } from '../../lib/fs.js';
import { exportServer } from '../keys/server-join.js';
import { withData } from './common.js';
import { REGISTRY_ENV } from '../storage/open.js';

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

const exportCommand = defineCommand({
  command: 'export',
  describe:
    'Write what another server machine needs to serve this fleet (server keys, release.jwks, HTTP token, topic prefix, registry URL) to FILE, 0600: it holds the private keys. Then on that machine: provision-server init --join FILE. The release signing key is not exported',
  builder: (y) =>
    withData(y)
      .option('out', {
        type: 'string',
        demandOption: true,
        requiresArg: true,
        describe: 'the join file to write (0600; refused when it exists unless --force)',
      })
      .option('force', { type: 'boolean', default: false, describe: 'replace an existing FILE' }),
  handler: async (args) => {
    if (!args.force && (await exists(args.out))) throw new CodedError('E_EXISTS', `${args.out} exists; pass --force to replace it`);
    const file = await exportServer(args.data);
    // The registry the machines share: --registry, else the environment's, else what server.json records.
    const env = process.env[REGISTRY_ENV];
    const registry = args.registry ?? (env !== undefined && env.trim() !== '' ? env : undefined);
    if (registry !== undefined) file.config.registry = registry;
    await writeFileAtomic(args.out, `${JSON.stringify(file, null, 2)}\n`, { mode: 0o600 });
    process.stdout.write(
      `wrote ${args.out} (0600: it holds the server's private keys; move it to the other machine over a secure channel, then delete it)\n  on the other machine: provision-server init --data DIR --join ${args.out} --broker URL [--ca F --cert F --key F]\n`,
    );
  },
});

export const keysCommand: CommandModule = {
  command: 'keys <command>',
  describe: "Manage the server's keys",
  builder: (y: Argv) => y.command(initCommand).command(exportCommand).demandCommand(1, 'Name a keys command (see --help).'),
  handler: () => undefined,
};
