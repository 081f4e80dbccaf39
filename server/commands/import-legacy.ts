/** `provision-server import-legacy DIR`: register the seed system's devices from its user_keys/ tree. */
import { openDataDir } from '../data-dir.js';
import { importLegacy } from '../provisioning/legacy-import.js';
import { printable } from '../terminal-text.js';
import { withData, registryOption } from './common.js';
import { defineCommand } from '../../lib/cli.js';

export const importLegacyCommand = defineCommand({
  command: 'import-legacy <dir>',
  describe: "Register the seed system's devices from DIR/user_keys/{user_id}/{device_id}_public.pem (RSA keys, as RSA-OAEP-256 devices)",
  builder: (y) =>
    withData(y)
      .positional('dir', { type: 'string', demandOption: true, describe: 'the directory holding user_keys/ (or user_keys/ itself)' })
      .option('dry-run', { type: 'boolean', default: false, describe: 'report what would be imported, change nothing' }),
  handler: async (args) => {
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const result = await importLegacy(data.storage, args.dir, { dryRun: args.dryRun });
      for (const i of result.imported)
        process.stdout.write(`${args.dryRun ? 'would import' : 'imported'} ${i.deviceId} (user ${printable(i.userId)}, RSA ${i.bits}, kid ${i.kid})\n`);
      for (const s of result.skipped) process.stderr.write(`skipped ${printable(s.path)}: ${printable(s.reason)}\n`);
      process.stdout.write(`${result.imported.length} imported, ${result.skipped.length} skipped\n`);
      if (result.imported.length > 0 && !args.dryRun) {
        process.stdout.write(
          'note: legacy devices have no signing key yet; their acks verify once they enroll with a token or their signing key is added (device add --replace)\n',
        );
      }
    } finally {
      await data.storage.close();
    }
  },
});
