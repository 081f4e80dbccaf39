/**
 * The agent's start-up decisions, made before anything is wired: from the key
 * store, the state and the enrollment token, whether to enroll, to wait for a
 * `request`, or to refuse to start (exit statuses: commands/exit-statuses.ts).
 *
 * - keys and no state: waits for a `request` (keys made on the host);
 * - keys already used with a state file that is gone (key store marker
 *   `in-use.json`): never acted on again; with a token, new keys and
 *   enrollment; without, E_STATE_LOST (exit 2);
 * - no keys, enrollment token: generates keys and enrolls;
 * - not provisioned and a token: enrolls (generating keys if absent);
 * - decommissioned and a token: new keys (whatever keys are left) and a fresh
 *   state, then enrolls; keys that cannot be replaced (systemd credentials):
 *   E_KEYSTORE_READONLY (exit 2);
 * - no keys and no token: E_NOT_ENROLLED (exit 2), or exit 10 if decommissioned;
 * - decommissioned and no token: finishes the wipe if a crash interrupted it, exit 10.
 */
import { CodedError } from '../protocol/index.js';
import type { Logger } from '../lib/log.js';
import type { AgentConfig } from './config.js';
import type { KeyStore } from './store/keystore.js';
import { isKeyStoreError } from './store/keystore-errors.js';
import { initialState, stateLossAdvice, type StateStore } from './store/state.js';

/** A refusal to start. */
export class AgentStartError extends CodedError {
  override readonly name = 'AgentStartError';
}

export interface StartInputs {
  readonly config: AgentConfig;
  readonly log: Logger;
  readonly keystore: KeyStore;
  readonly store: StateStore;
  /** The enrollment token on the board, if there is one. */
  readonly token: string | undefined;
}

/** What the agent starts as: enrolling with `token`, or with its keys (provisioned, or waiting for a request). */
export type StartPlan = { readonly enrolling: true; readonly token: string } | { readonly enrolling: false };

/**
 * Decides how the agent starts, replacing the keys and the state first when
 * it enrolls as a new identity and marking the keys in use. Throws
 * AgentStartError (or a key store refusal) when it must not start.
 */
export async function planStart({ config, log, keystore, store, token }: StartInputs): Promise<StartPlan> {
  const st = store.state;

  if (st.decommissioned && token === undefined) {
    if (keystore.hasKeys() || keystore.previousEncryptionKey) await keystore.wipe();
    throw new AgentStartError(
      'E_DECOMMISSIONED',
      `device ${config.device_id} was decommissioned by a delete command; to use it again, provision it at the board (place a new enrollment token at ${config.enrollment_token})`,
    );
  }
  if (!keystore.hasKeys() && token === undefined) {
    throw new AgentStartError(
      'E_NOT_ENROLLED',
      `no device keys in ${config.keystore} and no enrollment token at ${config.enrollment_token}: this board is not enrolled. Create a bundle on the server (provision-server bundle --device ${config.device_id} ...) and copy its enroll.token to ${config.enrollment_token} (mode 0600), then start the agent again`,
    );
  }
  // Keys already used with a state file that is now gone: the seq floor and the recent commands that
  // refuse replays went with it, so these keys are never acted on again (new keys via enrollment).
  const stateLost = keystore.hasKeys() && keystore.inUse && !store.found;
  if (stateLost && token === undefined) {
    throw new AgentStartError(
      'E_STATE_LOST',
      `${store.path} is missing but the keys in ${config.keystore} were already used with it: without it, commands captured earlier could be replayed, so the agent will not use these keys. ${stateLossAdvice(store.path)}`,
    );
  }
  const enrolling = token !== undefined && (!st.provisioned || !keystore.hasKeys() || stateLost);
  if (enrolling) {
    // A new identity (new keys, fresh state) when there are no keys, when the keys' state is gone, and
    // for a decommissioned board: its old keys can still be there (a power cut during delete after the
    // state save, before the wipe; keys from systemd credentials, which the wipe cannot remove). The
    // state is reset to seq 0, so the old keys must go with it: otherwise the broker's redelivery of an
    // un-acked delete, or any command captured under them, would apply again. Keeping the old keys with
    // their seq floor instead would refuse those, but also every command of a server that counts this
    // device's seq from 1 again; new keys are safe either way. Keys that cannot be replaced (systemd
    // credentials) are refused (E_KEYSTORE_READONLY, exit 2) before anything changes.
    const fresh = st.decommissioned || !keystore.hasKeys() || stateLost;
    if (fresh) {
      if (stateLost)
        log.warn('state file missing for keys already in use: replacing the keys and enrolling again', { state: store.path, keystore: config.keystore });
      else if (st.decommissioned && keystore.hasKeys())
        log.warn('decommissioned board with a new enrollment token: replacing the keys left from before the decommissioning', { keystore: config.keystore });
      const keys = await keystore.generate({ force: true }).catch((err: unknown) => {
        if (isKeyStoreError(err) && err.code === 'E_KEYSTORE_READONLY') {
          throw new AgentStartError(
            err.code,
            `enrolling again needs new device keys (the old ones must never be used with a reset replay state), but ${err.message}`,
          );
        }
        throw err;
      });
      log.info('device keys generated for enrollment', { kids: keys.keys.map((k) => k.kid).join(',') });
      // New identity: commands sealed to the old keys cannot open, and the server may count seq from 1 again.
      await store.save({
        ...initialState(config.device_id),
        keys: { signing: keystore.signingKey?.kid ?? null, encryption: keystore.encryptionKey?.kid ?? null, previous_encryption: null },
      });
    }
  } else if (!st.provisioned) {
    log.warn('not provisioned and no enrollment token: waiting for a request command from the server');
  }
  if (keystore.hasKeys() && !keystore.inUse) {
    // The state file first, then the marker: a power cut in between leaves a state file and unmarked
    // keys, marked at the next start; never marked keys whose state was not written yet.
    if (!store.found) await store.save(store.state);
    await keystore.markInUse(config.device_id);
  }
  return enrolling && token !== undefined ? { enrolling: true, token } : { enrolling: false };
}
