/** `sensor-agent status`: what the state directory says (works whether or not the daemon runs). */
import { loadConfig, DEFAULT_CONFIG_PATH } from '../config.js';
import type { ReportSelftest } from '../../protocol/index.js';
import { loadSelftestRecord, SelftestRecordError } from '../store/selftest-record.js';
import { readState } from '../store/state.js';
import { defineCommand } from '../../lib/cli.js';

export interface StatusReport {
  device_id: string;
  provisioned: boolean;
  decommissioned: boolean;
  user_id: string | null;
  last_seq: number;
  keys: { signing: string | null; encryption: string | null; previous_encryption: string | null };
  broker: string;
  last_command: { jti: string; seq: number; action: string; status: string; code: string; detail: string; at: string } | null;
  pending: string[];
  /** The last self-test recorded (selftest.json); null when none is. */
  last_selftest: { ok: boolean; at: string } | null;
  /** Why selftest.json is refused (E_SELFTEST_RECORD), when it is there but not usable. */
  last_selftest_error?: string;
  state_file: string;
  updated_at: string | null;
}

export async function statusReport(configPath: string): Promise<StatusReport> {
  const config = await loadConfig(configPath);
  const st = await readState(config.state_dir);
  const iso = (s: number): string => new Date(s * 1000).toISOString();
  const last = st?.last_command ?? null;
  const pending: string[] = [];
  if (st?.pending_rotation) pending.push(`rotation (command ${st.pending_rotation.jti})`);
  if (st?.pending_broker) pending.push(`broker change to ${st.pending_broker.next.url} (command ${st.pending_broker.jti})`);
  if (st?.pending_upgrade) pending.push(`upgrade to ${st.pending_upgrade.version}, ${st.pending_upgrade.phase} (command ${st.pending_upgrade.jti})`);
  let selftest: ReportSelftest | null = null;
  let selftestError: string | undefined;
  try {
    selftest = await loadSelftestRecord(config.state_dir);
  } catch (err) {
    if (!(err instanceof SelftestRecordError)) throw err;
    selftestError = `${err.code}: ${err.message}`;
  }
  return {
    device_id: config.device_id,
    provisioned: st?.provisioned ?? false,
    decommissioned: st?.decommissioned ?? false,
    user_id: st?.user_id ?? null,
    last_seq: st?.last_seq ?? 0,
    keys: st?.keys ?? { signing: null, encryption: null, previous_encryption: null },
    broker: st?.settings.broker?.url ?? config.broker.url,
    last_command: last ? { ...last, at: iso(last.at) } : null,
    pending,
    last_selftest: selftest ? { ok: selftest.ok, at: iso(selftest.at) } : null,
    ...(selftestError !== undefined ? { last_selftest_error: selftestError } : {}),
    state_file: `${config.state_dir}/state.json`,
    updated_at: st && st.updated_at > 0 ? iso(st.updated_at) : null,
  };
}

export const statusCommand = defineCommand({
  command: 'status',
  describe: 'Show provisioned or not, user, last seq, key ids, broker, last command, last self-test (from the state directory)',
  builder: (y) =>
    y
      .option('config', { type: 'string', default: DEFAULT_CONFIG_PATH, describe: 'config file' })
      .option('json', { type: 'boolean', default: false, describe: 'JSON on stdout (top level: provisioned, user_id, ...)' }),
  handler: async (args) => {
    const r = await statusReport(args.config);
    if (args.json) {
      process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
      return;
    }
    const lines = [
      `device:        ${r.device_id}`,
      `provisioned:   ${r.provisioned ? 'yes' : r.decommissioned ? 'no (decommissioned)' : 'no'}`,
      `user:          ${r.user_id ?? '-'}`,
      `last seq:      ${r.last_seq}`,
      `signing key:   ${r.keys.signing ?? '-'}`,
      `encryption key: ${r.keys.encryption ?? '-'}${r.keys.previous_encryption ? ` (previous ${r.keys.previous_encryption} kept)` : ''}`,
      `broker:        ${r.broker}`,
      `last command:  ${r.last_command ? `${r.last_command.action} seq ${r.last_command.seq}: ${r.last_command.status} ${r.last_command.code} at ${r.last_command.at} (${r.last_command.detail})` : '-'}`,
    ];
    lines.push(`last selftest: ${r.last_selftest_error ?? (r.last_selftest ? `${r.last_selftest.ok ? 'passed' : 'failed'} at ${r.last_selftest.at}` : '-')}`);
    if (r.pending.length > 0) lines.push(`in progress:   ${r.pending.join('; ')}`);
    process.stdout.write(`${lines.join('\n')}\n`);
  },
});
