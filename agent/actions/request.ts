/**
 * `request`: confirms the enrollment and binds the device to `user_id`; the device
 * becomes provisioned. The enrollment is completed (token removed, LED solid,
 * sensor enabled) after the state is saved and before the PUBACK and the ack, so
 * an `applied` ack means all of that is done.
 */
import type { CommandClaims } from '../../protocol/index.js';
import type { ActionContext, ActionDescriptor } from './descriptor.js';
import { applied, type Outcome } from './outcome.js';

export const requestAction: ActionDescriptor<'request'> = {
  action: 'request',
  needsProvisioned: false,
  runsHook: true,
  ack: 'pipeline',
  retiresPreviousKey: true,
  savesFailedChange: false,
  apply: applyRequest,
};

export async function applyRequest({ rt, onProvisioned }: ActionContext, claims: CommandClaims<'request'>): Promise<Outcome> {
  const was = rt.store.state;
  const again = was.provisioned;
  return applied(again ? `provisioned; user ${claims.user_id}` : `enrolled and provisioned for user ${claims.user_id}`, {
    mutate: (d) => {
      d.provisioned = true;
      d.decommissioned = false;
      d.user_id = claims.user_id;
      d.enrolled_at ??= Math.floor(Date.now() / 1000);
      d.keys.signing = rt.keystore.signingKey?.kid ?? null;
      d.keys.encryption = rt.keystore.encryptionKey?.kid ?? null;
    },
    beforePuback: () => onProvisioned(claims.user_id),
  });
}
