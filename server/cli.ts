#!/usr/bin/env node
/** `provision-server`: seals provisioning commands for sensor boards and verifies their acks. */
import { createRequire } from 'node:module';
import type yargsModule from 'yargs';
import { hideBin } from 'yargs/helpers';
import { helpHint, reportError } from './cli-support.js';
import { bundleCommand } from './commands/bundle.js';
import { deviceCommand } from './commands/device.js';
import { importLegacyCommand } from './commands/import-legacy.js';
import { initCommand } from './commands/init.js';
import { inspectCommand } from './commands/inspect.js';
import { keysCommand } from './commands/keys-init.js';
import { sealCommandModule } from './commands/seal.js';
import { sendCommand } from './commands/send.js';
import { serveCommand } from './commands/serve.js';
import { tokenCommand } from './commands/token.js';
import { packageVersion } from './version.js';

// yargs' CommonJS build: its ESM build's help layout (cliui without wrap-ansi) breaks lines in the middle of words.
const yargs = createRequire(import.meta.url)('yargs') as typeof yargsModule;

/** Each command and its subcommands (for the --help a usage error points at). */
const COMMANDS: Record<string, readonly string[]> = {
  init: [],
  token: ['create'],
  bundle: [],
  device: ['list', 'show', 'add', 'remove'],
  'import-legacy': [],
  send: [],
  serve: [],
  keys: ['init'],
  seal: [],
  inspect: [],
};

const PROGRAM = 'provision-server';

await yargs(hideBin(process.argv))
  .scriptName(PROGRAM)
  .usage('$0 <command> [options]\n\nSeals signed, encrypted provisioning commands for sensor boards and verifies their acks.')
  .command(initCommand)
  .command(tokenCommand)
  .command(bundleCommand)
  .command(deviceCommand)
  .command(importLegacyCommand)
  .command(sendCommand)
  .command(serveCommand)
  .command(keysCommand)
  .command(sealCommandModule)
  .command(inspectCommand)
  .demandCommand(1, 'Name a command (see --help).')
  .strict()
  .version(packageVersion())
  .help()
  .alias('h', 'help')
  .wrap(Math.min(100, process.stdout.columns || 100))
  .fail((msg: string | undefined, err: Error | undefined) => {
    // A handler's error is reported once, by the catch below; yargs' own (YError: validation, a flag's coerce) are usage errors.
    if (err && err.name !== 'YError') throw err;
    process.stderr.write(`${PROGRAM}: E_USAGE: ${msg ?? err?.message ?? 'bad usage'}\n${helpHint(PROGRAM, hideBin(process.argv), COMMANDS)}\n`);
    process.exit(2);
  })
  .parseAsync()
  .catch((err: unknown) => reportError(PROGRAM, err, helpHint(PROGRAM, hideBin(process.argv), COMMANDS)));
