/**
 * `rotate`: new signing and encryption keys; the ack (signed by the OLD
 * signing key, which the server knows) carries the new public keys; the old
 * encryption key stays as `encryption.previous.jwk` until a command arrives
 * under the new kid.
 *
 * Crash safety: before any key is written, a `pending_rotation` marker
 * (command jti, old and new kids, and the sealed ack) is saved. At the next
 * start, a marker whose new signing key is in the store means the rotation
 * finished (the state is completed and the redelivered command re-acked with
 * the stored ack); otherwise the redelivered command redoes the rotation,
 * keeping the original encryption key as the previous one, or, when the
 * redelivery is refused (e.g. expired by then), the rotation is undone
 * (`undoRotationKeys`): the original encryption key is current again.
 */
import { generateEncryptionKey, generateSigningKey, toJwkSet, type CommandClaims, type JwkSet } from '../../protocol/index.js';
import type { AgentRuntime } from '../runtime.js';
import type { ActionContext, ActionDescriptor } from './descriptor.js';
import type { Outcome } from './outcome.js';
import { recordCommand, type AgentState, type PendingRotation } from '../store/state.js';

export const rotateAction: ActionDescriptor<'rotate'> = {
  action: 'rotate',
  needsProvisioned: true,
  runsHook: true,
  ack: 'pipeline',
  retiresPreviousKey: false,
  savesFailedChange: true,
  apply: applyRotate,
};

export async function applyRotate({ rt }: ActionContext, claims: CommandClaims<'rotate'>): Promise<Outcome> {
  const ks = rt.keystore;
  const marker = rt.store.state.pending_rotation?.jti === claims.jti ? rt.store.state.pending_rotation : null;
  if (marker && ks.signingKey?.kid === marker.new_signing_kid) return finished(marker);

  const oldSigning = ks.signingKey;
  const original = !marker ? ks.encryptionKey : [ks.encryptionKey, ks.previousEncryptionKey].find((k) => k?.kid === marker.old_encryption_kid);
  if (!oldSigning || !original) {
    return { status: 'failed', code: 'E_KEYSTORE', detail: 'the current keys are not all in the key store; rotation not possible' };
  }
  const signing = await generateSigningKey();
  const encryption = await generateEncryptionKey({ type: original.kty === 'RSA' ? 'rsa' : 'ec' });
  const keys: JwkSet = toJwkSet([signing, encryption]);
  const detail = `keys rotated: signing ${signing.kid}, encryption ${encryption.kid}; previous encryption key ${original.kid} kept until a command uses the new one`;
  const ack = await rt.sealAck({ ref: claims.jti, seq: claims.seq, status: 'applied', code: 'OK', detail, result: { keys } }, oldSigning);
  const next: PendingRotation = {
    jti: claims.jti,
    seq: claims.seq,
    old_signing_kid: oldSigning.kid,
    old_encryption_kid: original.kid,
    new_signing_kid: signing.kid,
    new_encryption_kid: encryption.kid,
    ack,
  };
  await rt.store.update((d) => {
    d.pending_rotation = next;
  });
  try {
    if (ks.previousEncryptionKey?.kid !== original.kid) await ks.write('encryption.previous', original);
    await ks.write('encryption', encryption);
    await ks.write('signing', signing);
  } catch (err) {
    rt.log.error('rotation failed while writing keys', { reason: (err as Error).message });
    await rt.refreshDecryption();
    const failed = await rt.sealAck(
      { ref: claims.jti, seq: claims.seq, status: 'failed', code: 'E_KEYSTORE', detail: `rotation failed: ${(err as Error).message}` },
      ks.signingKey ?? oldSigning,
    );
    return {
      status: 'failed',
      code: 'E_KEYSTORE',
      detail: `rotation failed: ${(err as Error).message}`,
      ackToken: failed,
      mutate: (d) => {
        d.pending_rotation = null;
      },
    };
  }
  await rt.refreshDecryption();
  return finished(next, keys);
}

function finished(marker: PendingRotation, keys?: JwkSet): Outcome {
  return {
    status: 'applied',
    code: 'OK',
    detail: 'keys rotated',
    ...(keys ? { result: { keys } } : {}),
    ackToken: marker.ack,
    mutate: (d) => completeRotation(d, marker),
  };
}

export function completeRotation(d: AgentState, marker: PendingRotation): void {
  d.pending_rotation = null;
  d.rotate_ack = { jti: marker.jti, token: marker.ack };
  d.keys = { signing: marker.new_signing_kid, encryption: marker.new_encryption_kid, previous_encryption: marker.old_encryption_kid };
}

/** At start: a rotation that finished writing its keys before a crash is completed in the state. */
export async function resumeRotation(rt: AgentRuntime): Promise<{ jti: string; token: string } | undefined> {
  const marker = rt.store.state.pending_rotation;
  if (!marker) return undefined;
  if (rt.keystore.signingKey?.kid !== marker.new_signing_kid) {
    rt.log.warn('a rotation was interrupted before its keys were written; it is redone when the command is redelivered (undone if it is refused then)', {
      jti: marker.jti,
    });
    return undefined;
  }
  await rt.store.update((d) => {
    completeRotation(d, marker);
    recordCommand(d, {
      jti: marker.jti,
      seq: marker.seq,
      action: 'rotate',
      status: 'applied',
      code: 'OK',
      detail: 'keys rotated',
      at: Math.floor(Date.now() / 1000),
    });
  });
  rt.log.info('completed a rotation interrupted after its keys were written', { jti: marker.jti });
  return { jti: marker.jti, token: marker.ack };
}

/**
 * A refused command (e.g. E_EXPIRED after a long power cut) whose jti is the
 * pending rotation's: the rotation is never redone, so its half-written keys
 * are undone. The original encryption key (kept as `encryption.previous`) is
 * made current again and the copy as previous removed; the signing key is
 * written last by a rotation, so an interrupted one never replaced it. The
 * caller clears the marker in the same state write that records the refusal
 * (a crash before it: the redelivery is refused again and this runs again).
 * Without this, the next rotate would keep the orphaned key as "original".
 */
export async function undoRotationKeys(rt: AgentRuntime, marker: PendingRotation): Promise<void> {
  const ks = rt.keystore;
  const original = [ks.encryptionKey, ks.previousEncryptionKey].find((k) => k?.kid === marker.old_encryption_kid);
  if (!original) {
    rt.log.error('interrupted rotation refused, but its original encryption key is not in the key store; keys left as they are', {
      jti: marker.jti,
      kid: marker.old_encryption_kid,
    });
    return;
  }
  if (ks.encryptionKey?.kid !== original.kid) await ks.write('encryption', original);
  if (ks.previousEncryptionKey?.kid === original.kid) await ks.remove('encryption.previous');
  await rt.refreshDecryption();
  rt.log.warn('interrupted rotation undone: its command was refused; the original encryption key is current again', { jti: marker.jti, kid: original.kid });
}
