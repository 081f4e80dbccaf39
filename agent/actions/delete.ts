/**
 * `delete`: decommissions. The ack is sealed first (the keys are about to go),
 * the state saved as unprovisioned and decommissioned, then the private keys
 * and the enrollment token securely removed and the sensor-enable pin driven
 * low, before the PUBACK; after the ack the agent exits with status 10.
 * A crash after the state is saved finishes the wipe at the next start.
 */
import { join } from 'node:path';
import { SELFTEST_FILE } from '../store/selftest-record.js';
import { NEXT_WILL_FILE } from '../net/reporter.js';
import type { CommandClaims } from '../../protocol/index.js';
import { removeFileSecurely } from '../../lib/durable-file.js';
import type { AgentRuntime } from '../runtime.js';
import type { AgentState } from '../store/state.js';
import type { ActionContext, ActionDescriptor } from './descriptor.js';
import type { Outcome } from './outcome.js';

export const EXIT_DECOMMISSIONED = 10;

export const deleteAction: ActionDescriptor<'delete'> = {
  action: 'delete',
  needsProvisioned: false,
  runsHook: true,
  ack: 'pipeline',
  retiresPreviousKey: false,
  savesFailedChange: false,
  apply: applyDelete,
};

export async function applyDelete({ rt }: ActionContext, claims: CommandClaims<'delete'>): Promise<Outcome> {
  const detail = 'decommissioned: private keys and settings removed, sensor disabled';
  const ackToken = await rt.sealAck({ ref: claims.jti, seq: claims.seq, status: 'applied', code: 'OK', detail });
  return {
    status: 'applied',
    code: 'OK',
    detail,
    ackToken,
    mutate: (d) => decommission(d),
    beforePuback: () => wipeDevice(rt),
    afterAck: async () => {
      await rt.flushAcks(10_000);
      rt.requestExit(EXIT_DECOMMISSIONED, 'decommissioned by a delete command');
    },
  };
}

export function decommission(d: AgentState): void {
  d.provisioned = false;
  d.decommissioned = true;
  d.user_id = null;
  d.settings = {};
  d.keys = { signing: null, encryption: null, previous_encryption: null };
  d.pending_rotation = null;
  d.rotate_ack = null;
  d.pending_broker = null;
}

/** Removes the private keys and the enrollment token, drives the sensor low. Idempotent. */
export async function wipeDevice(rt: AgentRuntime): Promise<void> {
  await rt.io.setSensorEnabled(false);
  const wiped = await rt.keystore.wipe();
  await removeFileSecurely(rt.config.enrollment_token).catch(() => false);
  // The last self-test's outcome belongs to this provisioning: a re-provisioned board starts without one.
  await removeFileSecurely(join(rt.config.state_dir, SELFTEST_FILE)).catch(() => false);
  await removeFileSecurely(join(rt.config.state_dir, NEXT_WILL_FILE)).catch(() => false);
  if (wiped.leftInCredentials.length > 0) {
    rt.log.warn('keys supplied by systemd credentials cannot be removed by the agent; remove them from the credential store', {
      files: wiped.leftInCredentials.join(','),
    });
  }
  rt.io.setStatus('unprovisioned');
  rt.log.info('device wiped', { removed: wiped.removed.join(',') || 'none' });
}
