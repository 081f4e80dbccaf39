/**
 * Device presence from signed reports (protocol/report.ts): verified with the
 * device's registered signing key, recorded with the server's receive time.
 * Nothing unsigned moves a device online or offline: a device is offline when
 * its own sealed will (or clean-stop report) for its current connection says
 * so, or when no report has arrived for PRESENCE_GRACE times the interval it
 * announced.
 */
import { KeyRing, openReport, type ReportClaims } from '../../protocol/index.js';
import type { DevicePresenceRecord, ReportRecordOutcome } from '../storage/records.js';
import type { Storage } from '../storage/types.js';
import type { ServerKeys } from '../keys/server-keys.js';

/** A device whose last report is older than this many report intervals is offline. Kept in step with RolloutStore.deliverable. */
export const PRESENCE_GRACE = 2.5;

export type Presence = 'online' | 'offline' | 'unknown';

/** `unknown`: the device never sent a report (an agent without reports, or not connected since). */
export function presenceOf(p: DevicePresenceRecord, now: number): Presence {
  if (p.lastSeenAt === null) return 'unknown';
  if (p.reported !== 'online') return 'offline';
  return p.lastSeenAt + (p.intervalS ?? 0) * PRESENCE_GRACE * 1000 >= now ? 'online' : 'offline';
}

/**
 * Opens a report with the device's registered signing keys and records it
 * (storage.devices.recordReport: only if newer than the recorded one). `no-key`: the
 * device has no registered signing key (yet: a report racing its enrollment).
 */
export async function openAndRecordReport(
  storage: Storage,
  keys: ServerKeys,
  deviceId: string,
  payload: Buffer | string,
): Promise<{ kind: 'opened'; claims: ReportClaims; outcome: ReportRecordOutcome; signerKid: string } | { kind: 'no-key' }> {
  const signers = await storage.devices.reportVerificationKeys(deviceId);
  if (signers.length === 0) return { kind: 'no-key' };
  const { claims, signerKid, jws } = await openReport(payload, {
    serverId: keys.serverId,
    deviceId,
    decryption: keys.decryption,
    verification: await KeyRing.create(signers),
  });
  return { kind: 'opened', claims, outcome: await storage.devices.recordReport(deviceId, claims, jws), signerKid };
}
