/**
 * The registry's rules that are not storage: what a report changes in the
 * reported state, what a tag is, when an ack contradicts a recorded outcome.
 * Both implementations (SQLite, PostgreSQL) apply them, so they agree.
 */
import { compareReportPositions, reportPosition, type AckClaims, type ReportClaims } from '../../protocol/index.js';
import { RegistryError } from './errors.js';
import type { DeviceFlag, ReportedState } from './records.js';
import type { CommandRow, DeviceRow } from './rows.js';
import type { AckEffect } from './types.js';

/** The audit event (and device flag) of an authenticated ack contradicting a recorded outcome. */
export const ACK_CONTRADICTION_EVENT = 'security.ack_contradiction';

/** Tags: 1-64 characters of A-Z a-z 0-9 . _ - : starting with a letter or digit. */
export const TAG_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;

/** How long a signing key replaced by a rotate still verifies acks already in flight. */
export const PREVIOUS_KEY_GRACE_MS = 10 * 60 * 1000;

/**
 * The reported state after an accepted report: its claims, except that the
 * recorded `last_seq` and what commands change (settings, keys, self-test)
 * are kept when the report's `last_seq` is below the recorded one, or equal
 * for an `offline` report (sealed before its connection, it cannot know more).
 */
export function nextReportedState(previous: ReportedState | null, claims: ReportClaims): ReportedState {
  const fresh: ReportedState = {
    reason: claims.reason,
    iat: claims.iat,
    agent_version: claims.agent_version,
    node_version: claims.node_version,
    last_seq: claims.last_seq,
    kids: claims.kids,
    settings_digest: claims.settings_digest,
    uptime_s: claims.uptime_s,
    selftest: claims.selftest,
    // The upgrade under way (agents before upgrades never say: null).
    upgrade: claims.upgrade ?? null,
  };
  if (previous === null) return fresh;
  const ahead = claims.last_seq > previous.last_seq || (claims.last_seq === previous.last_seq && claims.reason !== 'offline');
  return ahead ? fresh : { ...previous, reason: claims.reason, iat: claims.iat };
}

export function assertTag(tag: string): void {
  if (!TAG_PATTERN.test(tag))
    throw new RegistryError('E_BAD_TAG', `tag "${tag}" must be 1-64 characters of A-Z a-z 0-9 . _ : - starting with a letter or digit`);
}

/**
 * Whether a later authenticated ack contradicts the outcome recorded for the
 * command: it claims `applied` where the registry recorded `rejected`/`failed`,
 * or, for a `rotate` recorded applied, reports other keys. An ack that does
 * not claim `applied` never does (`rejected E_REPLAY` or `E_EXPIRED` for a
 * redelivered command already applied is what an agent answers).
 */
export function ackContradicts(row: { action: string; ack_status: string | null; ack_result: string | null }, ack: AckClaims): boolean {
  if (ack.status !== 'applied' || row.ack_status === null) return false;
  if (row.ack_status !== 'applied') return true;
  if (row.action !== 'rotate') return false;
  // A repeated answer may carry no keys (the outcome only): only other keys contradict.
  const claimed = keyIds(ack.result);
  return claimed !== '' && claimed !== keyIds(row.ack_result === null ? undefined : (JSON.parse(row.ack_result) as unknown));
}

/** The sorted kids of a rotate ack's `result.keys`, as one string ('' when absent). */
export function keyIds(result: unknown): string {
  const keys = (result as { keys?: { keys?: unknown } } | undefined)?.keys?.keys;
  if (!Array.isArray(keys)) return '';
  return keys
    .map((k) => (typeof (k as { kid?: unknown })?.kid === 'string' ? (k as { kid: string }).kid : ''))
    .sort()
    .join(',');
}

export function deviceFlag(at: number, text: string | null): DeviceFlag {
  const parsed = text === null ? {} : (JSON.parse(text) as Record<string, unknown>);
  const { event, ...detail } = parsed;
  return { at, event: typeof event === 'string' ? event : 'unknown', detail };
}

/**
 * Why a verified report changes nothing, from the device's recorded row:
 * `duplicate` (the same report again) or `stale` (not newer than the newest
 * recorded: a replay, a late will, a legacy report after positioned ones);
 * undefined when it is to be recorded.
 */
export function reportNotNewer(
  row: Pick<DeviceRow, 'last_report_jti' | 'report_run' | 'report_n' | 'presence_conn' | 'presence_session'>,
  claims: ReportClaims,
): 'duplicate' | 'stale' | undefined {
  if (row.last_report_jti === claims.jti) return 'duplicate';
  const position = reportPosition(claims);
  if (position) {
    const recorded =
      row.report_run === null || row.report_n === null || row.presence_conn === null
        ? undefined
        : { run: row.report_run, conn: row.presence_conn, rank: row.report_n };
    if (recorded && compareReportPositions(position, recorded) <= 0) return 'stale';
    return undefined;
  }
  if (row.report_run !== null) return 'stale';
  if (claims.reason === 'offline' && (row.presence_session !== claims.session || row.presence_conn !== claims.conn)) return 'stale';
  return undefined;
}

/** The audit detail (and device flag) of an ack contradicting the recorded outcome of `row`; claimed keys from a keys-rotated effect. */
export function contradictionDetail(row: CommandRow, ack: AckClaims, effects: readonly AckEffect[], signed?: string): Record<string, unknown> {
  const rotated = effects.find((e) => e.kind === 'keys-rotated');
  return {
    jti: row.jti,
    action: row.action,
    seq: row.seq,
    recorded: { status: row.ack_status, code: row.ack_code, ack_jti: row.ack_jti },
    claimed: { status: ack.status, code: ack.code, ack_jti: ack.jti },
    ...(rotated ? { claimed_keys: { signing_kid: rotated.signing.kid, encryption_kid: rotated.encryption.kid } } : {}),
    effects: 'not applied',
    ...(signed !== undefined ? { ack_jws: signed } : {}),
  };
}

/** The audit event of a report that changes the device's agent version (from one known version to another). */
export const VERSION_REPORTED_EVENT = 'device.version.reported';

/** The audit event of a command's first delivery: the broker took it (PUBACK). */
export const COMMAND_SENT_EVENT = 'command.sent';

/** What markSent reads of a command (both backends). */
export interface DeliveryRow {
  jti: string;
  device_id: string;
  action: string;
  seq: number;
  fanout_id: string | null;
  /** Before this delivery. */
  sent_at: number | null;
}

export function deliveryDetail(row: DeliveryRow): Record<string, unknown> {
  return { jti: row.jti, action: row.action, seq: row.seq, ...(row.fanout_id !== null ? { rollout_id: row.fanout_id } : {}) };
}

/**
 * The audit detail of a recorded report that changes the agent version the
 * registry holds (not the first version learnt: every board reports one), with
 * the board's signed report (`report_jws`) for `audit verify`; undefined when
 * the version did not change.
 */
export function versionChange(recorded: string | null, claims: ReportClaims, signed?: string): Record<string, unknown> | undefined {
  if (recorded === null || recorded === claims.agent_version) return undefined;
  return { from: recorded, to: claims.agent_version, report_jti: claims.jti, ...(signed !== undefined ? { report_jws: signed } : {}) };
}
