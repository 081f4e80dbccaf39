/** `sensor-agent run`: the daemon. Exit statuses: docs/CONTRACTS.md (0 stopped, 1 failure, 2 usage/config, 10 decommissioned). */
import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import { startAgent, type RunningAgent } from '../agent.js';
import { CliError } from '../cli-support.js';
import { DEFAULT_CONFIG_PATH } from '../config.js';
import { isKeyStoreError } from '../keystore-errors.js';

interface RunArgs {
  config: string;
}

export const runCommand: CommandModule<object, RunArgs> = {
  command: 'run',
  describe: 'Run the agent: connect to the broker, enroll if needed, apply sealed provisioning commands',
  builder: (y: Argv) =>
    y
      .option('config', { type: 'string', default: DEFAULT_CONFIG_PATH, describe: 'config file' })
      .epilogue('Exit status: 0 stopped by SIGTERM/SIGINT, 1 runtime failure, 2 bad usage or configuration (including key store permissions, not enrolled, a state file that is damaged, planted, loosely protected, or lost for keys already in use), 10 decommissioned (do not restart: RestartPreventExitStatus=10).')
      .example('$0 run --config /etc/sensor-agent/config.json', 'run as the systemd service does') as unknown as Argv<RunArgs>,
  handler: async (args: ArgumentsCamelCase<RunArgs>) => {
    let agent: RunningAgent;
    try {
      agent = await startAgent({ configPath: args.config, systemdNotify: true });
    } catch (err) {
      // Key store refusals are configuration problems: exit 2 (systemd's restarts would not fix them).
      if (isKeyStoreError(err)) throw new CliError(err.code, err.message, 2);
      throw err;
    }
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
