#!/usr/bin/env node
/** `sensor-agent`: the on-device provisioning agent and its tools. */
import { createRequire } from 'node:module';
import type yargsModule from 'yargs';
import { hideBin } from 'yargs/helpers';
import { helpHint, reportError } from './cli-support.js';
import { inspectCommand } from './commands/inspect.js';
import { keygenCommand } from './commands/keygen.js';
import { runCommand } from './commands/run.js';
import { selftestCommand } from './commands/selftest.js';
import { statusCommand } from './commands/status.js';
import { packageVersion } from './version.js';

// yargs' CommonJS build: its ESM build's help layout (cliui without wrap-ansi) breaks lines in the middle of words.
const yargs = createRequire(import.meta.url)('yargs') as typeof yargsModule;

/** Each command and its subcommands (for the --help a usage error points at). */
const COMMANDS: Record<string, readonly string[]> = { keygen: [], inspect: [], run: [], selftest: [], status: [] };

const PROGRAM = 'sensor-agent';

await yargs(hideBin(process.argv))
  .scriptName(PROGRAM)
  .usage('$0 <command> [options]\n\nReceives signed, encrypted provisioning commands over MQTT and applies them on this board.')
  .command(keygenCommand)
  .command(inspectCommand)
  .command(runCommand)
  .command(selftestCommand)
  .command(statusCommand)
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
