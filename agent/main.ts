/** The `sensor-agent` program (agent/cli.ts runs it; the startup snapshot's entry calls it after deserializing). */
import { runCli } from '../lib/cli.js';
import { AGENT_EXIT_STATUSES } from './commands/exit-statuses.js';
import { inspectCommand } from './commands/inspect.js';
import { keygenCommand } from './commands/keygen.js';
import { runCommand } from './commands/run.js';
import { selftestCommand } from './commands/selftest.js';
import { statusCommand } from './commands/status.js';
import { verifyReleaseCommand } from './commands/verify-release.js';
import { agentVersion } from './version.js';

export function agentMain(): Promise<void> {
  return runCli({
    name: 'sensor-agent',
    description: 'Receives signed, encrypted provisioning commands over MQTT and applies them on this board.',
    commands: (cli) =>
      cli.command(keygenCommand).command(inspectCommand).command(runCommand).command(selftestCommand).command(statusCommand).command(verifyReleaseCommand),
    exitStatuses: AGENT_EXIT_STATUSES,
    subcommands: { keygen: [], inspect: [], run: [], selftest: [], status: [], 'verify-release': [] },
    version: agentVersion(),
  });
}
