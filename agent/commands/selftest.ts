/** `sensor-agent selftest`: the on-device self-test; exit 0 only when every required check passes. */
import { CodedError, parseDurationMs } from '../../protocol/index.js';
import { DEFAULT_CONFIG_PATH, loadConfig } from '../config.js';
import { ownsStateDir, writeSelftestRecord } from '../store/selftest-record.js';
import { formatReport, runSelftest } from '../selftest.js';
import { defineCommand } from '../../lib/cli.js';

export const selftestCommand = defineCommand({
  command: 'selftest',
  describe: 'Check this board: config, key store, keys, trust anchors, crypto, clock, state directory, broker, GPIO backend and pins, Node.js',
  builder: (y) =>
    y
      .option('config', { type: 'string', default: DEFAULT_CONFIG_PATH, describe: 'config file' })
      .option('json', { type: 'boolean', default: false, describe: 'machine-readable report on stdout' })
      .option('timeout', { type: 'string', default: '8s', describe: 'broker check timeout: 8 (seconds), 8s, 1m' })
      .epilogue(
        'GPIO: with gpio.backend "auto" or "onoff" the backend is loaded as `run` loads it (onoff and its native epoll addon) and the header gpiochip resolved, without exporting any pin (a running agent owns them). An addon that does not load under this Node.js (built for another CPU or Node ABI, damaged, missing) fails the check with the fix; with backend "auto" and no pins configured it is only a warning.\n\n' +
          'Exit status: 0 when every required check passes, 1 otherwise.',
      ),
  handler: async (args) => {
    const timeout = parseDurationMs(args.timeout);
    if ('problem' in timeout) throw new CodedError('E_USAGE', `--timeout "${args.timeout}" ${timeout.problem}`);
    const report = await runSelftest({ configPath: args.config, brokerTimeoutMs: Math.max(1000, timeout.ms) });
    process.stdout.write(args.json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
    await recordOutcome(args.config, report.ok);
    process.exitCode = report.ok ? 0 : 1;
  },
});

/** Records the outcome for the agent's reports, when the state directory is this user's (best effort, silent). */
async function recordOutcome(configPath: string, ok: boolean): Promise<void> {
  try {
    const config = await loadConfig(configPath);
    if (await ownsStateDir(config.state_dir)) await writeSelftestRecord(config.state_dir, ok);
  } catch {
    // an unreadable config is already a failed check in the report
  }
}
