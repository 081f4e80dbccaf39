/** `sensor-agent run`: the daemon. Exit statuses: docs/CONTRACTS.md (0 stopped, 1 failure, 2 usage/config, 10 decommissioned). */
import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import { startAgent, type RunningAgent } from '../agent.js';
import { DEFAULT_CONFIG_PATH } from '../config.js';

interface RunArgs {
  config: string;
}

export const runCommand: CommandModule<object, RunArgs> = {
  command: 'run',
  describe: 'Run the agent: connect to the broker, enroll if needed, apply sealed provisioning commands',
  builder: (y: Argv) =>
    y
      .option('config', { type: 'string', default: DEFAULT_CONFIG_PATH, describe: 'config file' })
      .epilogue('Exit status: 0 stopped by SIGTERM/SIGINT, 1 runtime failure (systemd restarts it), 2 bad usage or configuration (including key store permissions, not enrolled), 10 decommissioned. A restart cannot fix 2 or 10: the unit has RestartPreventExitStatus=2 10 and SuccessExitStatus=10.')
      .example('# run as the systemd service does\n$0 run --config /etc/sensor-agent/config.json', '') as unknown as Argv<RunArgs>,
  handler: async (args: ArgumentsCamelCase<RunArgs>) => {
    // Refusals to start carry their exit status (2 for configuration and key store problems, 10 decommissioned).
    const agent: RunningAgent = await startAgent({ configPath: args.config, systemdNotify: true });
    const onSignal = (signal: NodeJS.Signals): void => {
      process.stderr.write(`INFO ${signal} received: finishing the command in flight and disconnecting\n`);
      void agent.stop();
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    const status = await agent.exited;
    process.exitCode = status;
    // Everything is closed; leave no straggler (e.g. a hook still being killed) holding the exit.
    setImmediate(() => process.exit(status));
  },
};
