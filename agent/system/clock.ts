/**
 * The clock policy: whether `exp`/`iat` can be checked. A Pi has no RTC, so
 * with `auto` the clock is trusted only when NTP synchronisation is known:
 * /run/systemd/timesync/synchronized exists (systemd-timesyncd), or
 * `timedatectl show -p NTPSynchronized --value` says yes (2 s timeout).
 */
import { execFile } from 'node:child_process';
import { access } from 'node:fs/promises';
import type { ClockPolicy } from '../../protocol/index.js';
import type { ClockPolicyName } from '../config.js';

export interface ClockStatus {
  trusted: boolean;
  /** How the decision was made, for logs and the self-test. */
  reason: string;
}

export const TIMESYNC_FLAG = '/run/systemd/timesync/synchronized';

export async function ntpSynchronized(flagFile = TIMESYNC_FLAG): Promise<{ synced: boolean | undefined; how: string }> {
  try {
    await access(flagFile);
    return { synced: true, how: `${flagFile} exists` };
  } catch {
    // fall through to timedatectl
  }
  const answer = await new Promise<string | undefined>((resolve) => {
    execFile('timedatectl', ['show', '-p', 'NTPSynchronized', '--value'], { timeout: 2000 }, (err, stdout) => resolve(err ? undefined : stdout.trim()));
  });
  if (answer === 'yes') return { synced: true, how: 'timedatectl reports NTPSynchronized=yes' };
  if (answer === 'no') return { synced: false, how: 'timedatectl reports NTPSynchronized=no' };
  return { synced: undefined, how: `neither ${flagFile} nor timedatectl can tell` };
}

export async function clockStatus(policy: ClockPolicyName): Promise<ClockStatus> {
  if (policy === 'trusted') return { trusted: true, reason: 'clock.policy is "trusted"' };
  if (policy === 'untrusted') return { trusted: false, reason: 'clock.policy is "untrusted"' };
  const ntp = await ntpSynchronized();
  return { trusted: ntp.synced === true, reason: ntp.how };
}

export function toClockPolicy(status: ClockStatus, maxSkewSeconds: number): ClockPolicy {
  return { trusted: status.trusted, maxSkewSeconds };
}
