/** `sensor-agent run`: the daemon. Exit statuses: docs/CONTRACTS.md (0 stopped, 1 failure, 2 usage/config, 10 decommissioned). */
import { startAgent, type RunningAgent, type StartAgentOptions } from '../agent.js';
import { CodedError } from '../../protocol/index.js';
import { DEFAULT_CONFIG_PATH } from '../config.js';
import { DEFAULT_ENROLLMENT_RETRY } from '../net/enrollment.js';
import { DEFAULT_BACKOFF } from '../net/mqtt-session.js';
import { defineCommand } from '../../lib/cli.js';

/**
 * TEST ONLY, never set on a board: SENSOR_AGENT_TEST_TIME_SCALE=F (0 < F <= 1) multiplies the
 * agent's own retry delays (broker reconnect 1 s doubling to 60 s, enrollment 5 s doubling to
 * 5 min) by F, so a test can play a boot with the broker down for many minutes in seconds
 * (test/agent/systemd-notify.test.ts). Nothing else changes; the agent warns when it is set.
 */
export const TEST_TIME_SCALE_ENV = 'SENSOR_AGENT_TEST_TIME_SCALE';

export function testTimeScale(
  env: NodeJS.ProcessEnv = process.env,
  warn = (line: string): unknown => process.stderr.write(line),
): Pick<StartAgentOptions, 'backoff' | 'enrollment'> {
  const raw = env[TEST_TIME_SCALE_ENV];
  if (raw === undefined || raw === '') return {};
  const f = Number(raw);
  if (!Number.isFinite(f) || f <= 0 || f > 1)
    throw new CodedError('E_USAGE', `${TEST_TIME_SCALE_ENV}=${raw}: a number in (0, 1] was expected (test only: unset it)`);
  const scale = (ms: number): number => Math.max(1, Math.round(ms * f));
  warn(`WARN ${TEST_TIME_SCALE_ENV}=${raw} (test only): retry delays scaled by ${f}\n`);
  return {
    backoff: { minMs: scale(DEFAULT_BACKOFF.minMs), maxMs: scale(DEFAULT_BACKOFF.maxMs) },
    enrollment: { retryMinMs: scale(DEFAULT_ENROLLMENT_RETRY.retryMinMs), retryMaxMs: scale(DEFAULT_ENROLLMENT_RETRY.retryMaxMs) },
  };
}

export const runCommand = defineCommand({
  command: 'run',
  describe: 'Run the agent: connect to the broker, enroll if needed, apply sealed provisioning commands',
  builder: (y) =>
    y
      .option('config', { type: 'string', default: DEFAULT_CONFIG_PATH, describe: 'config file' })
      .epilogue(
        'Under systemd (Type=notify; NOTIFY_SOCKET set): READY=1 as soon as the local start-up is done (config, key store, state, trust anchors, GPIO), whether or not the broker can be reached. The broker is then retried with backoff (1 s doubling to 60 s, with jitter) for as long as it takes, enrollment likewise (5 s doubling to 5 min); STATUS= (systemctl status sensor-agent) says what the agent waits for, e.g. "waiting for broker mqtts://host:8883: ECONNREFUSED, attempt 7, next in 32 s", then "connected to ...". WATCHDOG=1 is sent while the agent is healthy, connected or not.\n\n' +
          'Exit status: 0 stopped by SIGTERM/SIGINT, 1 runtime failure, 2 bad usage or configuration (including key store permissions, not enrolled, a state file that is damaged, planted, loosely protected, or lost for keys already in use), 10 decommissioned. A restart cannot fix 2 or 10: the unit has RestartPreventExitStatus=2 10 and SuccessExitStatus=10.',
      )
      .example('# run as the systemd service does\n$0 run --config /etc/sensor-agent/config.json', ''),
  handler: async (args) => {
    // A refusal to start ends with the status in exit-statuses.ts (e.g. key store refusals: 2, which systemd's restarts would not fix).
    const agent: RunningAgent = await startAgent({ configPath: args.config, systemdNotify: true, ...testTimeScale() });
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
});
