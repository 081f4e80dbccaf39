/**
 * Messages from devices: enrollments (self-signed, token checked and consumed,
 * keys registered, then the sealed `request` sent) and acks (verified with the
 * device's registered signing key, matched to the command, recorded once).
 * Anything that does not verify is logged and dropped.
 */
import {
  KeyRing,
  ProtocolError,
  isAckResultKeys,
  isCodedError,
  isProtocolError,
  openAck,
  openEnrollment,
  parseJwkSet,
  parseTopic,
  type PublicJwk,
} from '../../protocol/index.js';
import type { CommandSender } from './command-sender.js';
import type { EnrollRefusals } from './enroll-refusals.js';
import type { Logger } from '../../lib/log.js';
import { isRegistryError } from '../storage/errors.js';
import { ackEffectsOf, serverActionOf, type RotatedKeys } from './actions/table.js';
import type { CommandRecord } from '../storage/records.js';
import { logStorageError } from '../storage-error.js';
import type { Storage } from '../storage/types.js';
import type { ServerKeys } from '../keys/server-keys.js';
import { openAndRecordReport } from './presence.js';
import type { ReportClaims } from '../../protocol/index.js';
import type { ReportIntake } from './report-intake.js';

export interface InboundContext {
  storage: Storage;
  keys: ServerKeys;
  topicPrefix: string;
  sender: CommandSender;
  log: Logger;
  /** Told of every ack recorded (by this process or found already recorded). */
  onAck?: (command: CommandRecord) => void;
  /** Told of every report recorded, i.e. newer than the device's last (the rollout engine delivers to a device that reports in). */
  onReport?: (deviceId: string, claims: ReportClaims) => void;
  /** Rate limit, hold of reports that race their enrollment, drop counts (serve); without it every report is opened at once. */
  reports?: ReportIntake;
  /** Told of the result of a held report's retry (it comes after handleInbound returned). */
  onLateResult?: (result: InboundResult) => void;
  /** Aggregates refused enrollments in the audit and the log (a flood writes a bounded number of rows); without it each is audited. */
  enrollRefusals?: EnrollRefusals;
}

export type InboundResult =
  | { kind: 'ack'; command: CommandRecord; duplicate: boolean }
  /** An authenticated ack contradicting the command's recorded outcome: audited, device flagged, effects not applied. */
  | { kind: 'contradiction'; command: CommandRecord; claimed: { status: string; code: string } }
  | { kind: 'enrolled'; deviceId: string; request: CommandRecord; repeated: boolean }
  | { kind: 'report'; deviceId: string; reason: string; recorded: 'recorded' | 'duplicate' | 'stale' }
  /** A report over its device's rate (dropped unopened), or held until the device's keys are known. */
  | { kind: 'report-deferred'; deviceId: string; what: 'rate-limited' | 'held' | 'no-key' }
  | { kind: 'dropped'; code: string; reason: string }
  | { kind: 'ignored' };

/** The storage could not be reached (a lost PostgreSQL connection): the message fails, it is no refusal of the device's. */
const STORAGE_UNAVAILABLE = 'E_STORAGE_UNAVAILABLE';

/**
 * Routes one MQTT message by its topic (`retry`: a held report again, topic
 * ignored). Never throws: refusals (and storage errors) are logged and returned.
 */
export async function handleInbound(
  ctx: InboundContext,
  topic: string,
  payload: Buffer | string,
  retry?: { report: { deviceId: string; retried: true } },
): Promise<InboundResult> {
  const parsed = retry ? { kind: 'report' as const, deviceId: retry.report.deviceId } : parseTopic(ctx.topicPrefix, topic);
  if (!parsed || parsed.kind === 'command') return { kind: 'ignored' };
  try {
    if (parsed.kind === 'report') return await handleReport(ctx, parsed.deviceId, payload, retry !== undefined);
    return parsed.kind === 'ack' ? await handleAck(ctx, parsed.deviceId, payload) : await handleEnrollment(ctx, parsed.deviceId, payload);
  } catch (err) {
    const code = isProtocolError(err) || isRegistryError(err) || isCodedError(err) ? err.code : 'E_INTERNAL';
    const reason = err instanceof Error ? err.message : String(err);
    if (code === STORAGE_UNAVAILABLE) {
      logStorageError(ctx.log, err, { topic: parsed.kind, device: parsed.deviceId });
      return { kind: 'dropped', code, reason };
    }
    if (parsed.kind === 'enroll' && ctx.enrollRefusals && code !== 'E_INTERNAL') {
      await ctx.enrollRefusals.refused(parsed.deviceId, code, reason, isRegistryError(err));
      return { kind: 'dropped', code, reason };
    }
    ctx.log[code === 'E_INTERNAL' ? 'error' : 'warn'](`${parsed.kind}.dropped`, { device: parsed.deviceId, code, reason });
    // Only authenticated enrollments whose token was refused are audited: garbage on the topic is logged, never stored.
    if (parsed.kind === 'enroll' && isRegistryError(err)) {
      await ctx.storage.audit.append('device.enroll.refused', parsed.deviceId, { code, reason }).catch((e: unknown) => logStorageError(ctx.log, e));
    }
    return { kind: 'dropped', code, reason };
  }
}

export async function handleEnrollment(ctx: InboundContext, topicDeviceId: string, payload: Buffer | string): Promise<InboundResult> {
  const { storage, keys } = ctx;
  const opened = await openEnrollment(payload, { serverId: keys.serverId, topicDeviceId, decryption: keys.decryption });
  const { userId, repeated } = await storage.enrollment.enroll({
    deviceId: opened.claims.iss,
    token: opened.claims.token,
    enrollmentJti: opened.claims.jti,
    signing: opened.signing,
    encryption: opened.encryption,
  });
  ctx.log.info(repeated ? 'enroll.repeated' : 'enroll.accepted', { device: opened.claims.iss, user: userId, signing_kid: opened.signing.kid });
  ctx.reports?.enrolled(opened.claims.iss);
  // A repeated enrollment (the board missed our answer) gets the pending `request` again, unchanged, while it is valid.
  const pending = repeated
    ? (await storage.commands.list({ deviceId: opened.claims.iss, limit: 20 })).find(
        (c) => c.action === 'request' && c.ackStatus === null && c.voidedAt === null && c.expiresAt > storage.now() + 5000,
      )
    : undefined;
  const pendingToken = pending ? await storage.commands.sealed(pending.jti) : undefined;
  const { command: request, token } =
    pending && pendingToken !== undefined
      ? { command: pending, token: pendingToken }
      : await ctx.sender.seal({ deviceId: opened.claims.iss, action: 'request', userId });
  // Not awaited: the PUBACK of this publish arrives on the session whose inbound
  // message we are still handling (mqtt.js handles incoming packets in order).
  ctx.sender.publish(request.deviceId, request.jti, token).then(
    () => ctx.log.info('command.sent', { device: request.deviceId, action: 'request', seq: request.seq, jti: request.jti }),
    (err: unknown) =>
      ctx.log.error('command.publish_failed', { device: request.deviceId, jti: request.jti, reason: err instanceof Error ? err.message : String(err) }),
  );
  return { kind: 'enrolled', deviceId: opened.claims.iss, request, repeated };
}

/**
 * A report: over the device's rate, dropped unopened; from a device without a
 * registered signing key (its report raced its enrollment), held and retried
 * once (`retried`), then dropped quietly; otherwise opened and recorded if it
 * is newer than the device's last (a report that is not changes nothing and
 * is logged at debug level only: replays and late wills are routine).
 */
export async function handleReport(ctx: InboundContext, deviceId: string, payload: Buffer | string, retried = false): Promise<InboundResult> {
  if (!retried && ctx.reports && !ctx.reports.admit(deviceId)) return { kind: 'report-deferred', deviceId, what: 'rate-limited' };
  const opened = await openAndRecordReport(ctx.storage, ctx.keys, deviceId, payload);
  if (opened.kind === 'no-key') {
    const reports = ctx.reports;
    const retry = async (): Promise<void> => {
      const result = await handleInbound(ctx, '', payload, { report: { deviceId, retried: true } });
      ctx.onLateResult?.(result);
    };
    if (!retried && reports?.hold(deviceId, retry)) {
      ctx.log.debug('report.held', { device: deviceId, note: 'no signing key registered yet (enrollment in flight?): retried once shortly' });
      return { kind: 'report-deferred', deviceId, what: 'held' };
    }
    reports?.noKey();
    ctx.log.debug('report.dropped', { device: deviceId, code: 'E_KID', reason: 'no signing key registered for this device: its reports cannot be verified' });
    return { kind: 'report-deferred', deviceId, what: 'no-key' };
  }
  const { claims, outcome, signerKid } = opened;
  const fields = { device: deviceId, reason: claims.reason, run: claims.run, conn: claims.conn, n: claims.n, last_seq: claims.last_seq };
  if (outcome.kind !== 'recorded') {
    ctx.reports?.stale();
    ctx.log.debug(`report.${outcome.kind}`, { ...fields, note: 'not newer than the report recorded: nothing changed' });
    return { kind: 'report', deviceId, reason: claims.reason, recorded: outcome.kind };
  }
  const upgrade = claims.upgrade
    ? `${claims.upgrade.to} ${claims.upgrade.phase}${claims.upgrade.done !== undefined ? ` ${claims.upgrade.done}/${claims.upgrade.total ?? '?'}` : ''}`
    : undefined;
  ctx.log.info('report.recorded', { ...fields, agent: claims.agent_version, ...(upgrade ? { upgrade } : {}), signer_kid: signerKid });
  ctx.onReport?.(deviceId, claims);
  return { kind: 'report', deviceId, reason: claims.reason, recorded: outcome.kind };
}

export async function handleAck(ctx: InboundContext, deviceId: string, payload: Buffer | string): Promise<InboundResult> {
  const { storage, keys } = ctx;
  const signers = await storage.devices.verificationKeys(deviceId);
  if (signers.length === 0) return drop(ctx, deviceId, 'E_KID', 'no signing key registered for this device: its acks cannot be verified');
  const { claims, signerKid, jws } = await openAck(payload, {
    serverId: keys.serverId,
    deviceId,
    decryption: keys.decryption,
    verification: await KeyRing.create(signers),
  });
  const command = await storage.commands.get(claims.ref);
  if (!command || command.deviceId !== deviceId) return drop(ctx, deviceId, 'E_NO_COMMAND', `verified ack refers to unknown command ${claims.ref}`);
  if (claims.seq !== 0 && claims.seq !== command.seq) {
    return drop(ctx, deviceId, 'E_CLAIMS', `ack of ${claims.ref} carries seq ${claims.seq}, the command had ${command.seq}`);
  }
  const action = serverActionOf(command);
  if (action?.outcomeLater && command.ackStatus === null && claims.status === 'rejected' && claims.code === 'E_REPLAY') {
    // A copy of an upgrade the board already took (a redelivery): its outcome comes when the board decided
    // (applied or rolled_back after the health gate), so "already seen" is not recorded as the outcome.
    ctx.log.info('ack.replay_noted', { device: deviceId, action: command.action, seq: command.seq, note: 'upgrade in progress: outcome still to come' });
    return { kind: 'ignored' };
  }
  let keysReported: RotatedKeys | undefined;
  if (action?.reportsKeys && claims.status === 'applied') {
    // For an ack of a command already answered, the keys are only reported (in the audit), never adopted.
    if (command.ackStatus === null) keysReported = await rotatedKeys(claims.result);
    else keysReported = await rotatedKeys(claims.result).catch(() => undefined);
  }
  const outcome = await storage.commands.recordAck(deviceId, claims, ackEffectsOf(command, claims, keysReported), jws);
  if (outcome.kind === 'unknown-command') return drop(ctx, deviceId, 'E_NO_COMMAND', `ack refers to unknown command ${claims.ref}`);
  if (outcome.kind === 'contradiction') {
    ctx.log.error('security.ack_contradiction', {
      device: deviceId,
      action: command.action,
      seq: command.seq,
      jti: command.jti,
      recorded: `${command.ackStatus} ${command.ackCode}`,
      claimed: `${claims.status} ${claims.code}`,
      signer_kid: signerKid,
      note: 'the device reports applying a command the registry recorded as not applied; effects not applied, device flagged: re-enroll it',
    });
    return { kind: 'contradiction', command: outcome.command, claimed: { status: claims.status, code: claims.code } };
  }
  const duplicate = outcome.kind === 'duplicate';
  ctx.log[claims.status === 'applied' ? 'info' : 'warn'](duplicate ? 'ack.duplicate' : 'ack.recorded', {
    device: deviceId,
    action: command.action,
    seq: command.seq,
    status: claims.status,
    code: claims.code,
    signer_kid: signerKid,
  });
  ctx.onAck?.(outcome.command);
  return { kind: 'ack', command: outcome.command, duplicate };
}

async function rotatedKeys(result: Record<string, unknown> | undefined): Promise<{ signing: PublicJwk; encryption: PublicJwk }> {
  if (!isAckResultKeys(result)) throw new ProtocolError('E_CLAIMS', 'the rotate ack carries no result.keys JWK set');
  const keys = await parseJwkSet(result.keys);
  const signing = keys.filter((k) => k.use === 'sig');
  const encryption = keys.filter((k) => k.use === 'enc');
  if (signing.length !== 1 || encryption.length !== 1) {
    throw new ProtocolError('E_CLAIMS', 'the rotate ack must carry exactly one new signing and one new encryption key');
  }
  return { signing: signing[0] as PublicJwk, encryption: encryption[0] as PublicJwk };
}

function drop(ctx: InboundContext, deviceId: string, code: string, reason: string): InboundResult {
  ctx.log.warn('ack.dropped', { device: deviceId, code, reason });
  return { kind: 'dropped', code, reason };
}
