#!/usr/bin/env node
/** `provision-server`: seals provisioning commands for sensor boards and verifies their acks. */
import { runCli } from '../lib/cli.js';
import { auditCommand } from './commands/audit.js';
import { bundleCommand } from './commands/bundle.js';
import { deviceCommand } from './commands/device.js';
import { SERVER_EXIT_STATUSES } from './commands/exit-statuses.js';
import { importLegacyCommand } from './commands/import-legacy.js';
import { initCommand } from './commands/init.js';
import { inspectCommand } from './commands/inspect.js';
import { keysCommand } from './commands/keys-init.js';
import { sealCommandModule } from './commands/seal.js';
import { registryCommand } from './commands/registry-migrate.js';
import { releaseCommand } from './commands/release.js';
import { rolloutCommand } from './commands/rollout.js';
import { sendCommand } from './commands/send.js';
import { serveCommand } from './commands/serve.js';
import { tokenCommand } from './commands/token.js';
import { userCommand } from './commands/user.js';

await runCli({
  name: 'provision-server',
  description: 'Seals signed, encrypted provisioning commands for sensor boards and verifies their acks.',
  commands: (cli) =>
    cli
      .command(initCommand)
      .command(tokenCommand)
      .command(userCommand)
      .command(bundleCommand)
      .command(deviceCommand)
      .command(importLegacyCommand)
      .command(sendCommand)
      .command(rolloutCommand)
      .command(releaseCommand)
      .command(auditCommand)
      .command(registryCommand)
      .command(serveCommand)
      .command(keysCommand)
      .command(sealCommandModule)
      .command(inspectCommand),
  exitStatuses: SERVER_EXIT_STATUSES,
  subcommands: {
    init: [],
    token: ['create', 'list'],
    user: ['add', 'list', 'remove', 'passwd'],
    bundle: [],
    device: ['list', 'show', 'add', 'remove', 'tag'],
    'import-legacy': [],
    send: [],
    rollout: ['list', 'show', 'pause', 'resume', 'cancel', 'retry'],
    release: ['keygen', 'add', 'list', 'show', 'remove'],
    audit: ['verify', 'checkpoint', 'checkpoints', 'export'],
    registry: ['migrate'],
    serve: [],
    keys: ['init'],
    seal: [],
    inspect: [],
  },
});
