/**
 * The exit status `provision-server` ends with for each refusal code (any
 * other: 1). Only the CLI edge reads it (server/cli.ts): 2 is bad usage or
 * set-up (a data directory, key or file to fix), 5 a `send --wait` that got no
 * ack in time (send's other statuses: SEND_EXIT in send.ts).
 */
import { INPUT_EXIT_STATUSES, exitStatusOf, type ExitStatuses } from '../../lib/cli.js';
import { SEND_EXIT } from './send.js';

const SETUP = 2;

export const SERVER_EXIT_STATUSES: ExitStatuses = {
  ...INPUT_EXIT_STATUSES,
  E_CONFIG: SETUP,
  E_EXISTS: SETUP,
  E_JOIN: SETUP, // init --join: a join file that is not one (server/server-join.ts)
  E_KEY: SETUP,
  E_KEYS_EXIST: SETUP,
  E_KEY_CORRUPT: SETUP,
  E_KEY_PERMS: SETUP,
  E_NO_DATA: SETUP,
  E_JOSE_UNPATCHED: SETUP,
  E_NO_KEYS: SETUP,
  E_PARAMS: SETUP, // --params / --set that do not parse; params that parse but are invalid are a ProtocolError (1)
  E_DEVICE_EXISTS: SETUP,
  E_NO_ROLLOUT: SETUP,
  E_ROLLOUT_STATE: SETUP,
  E_BAD_TAG: SETUP,
  // user add|remove|passwd (server/commands/user.ts)
  E_BAD_OPERATOR: SETUP,
  E_OPERATOR_EXISTS: SETUP,
  E_NO_OPERATOR: SETUP,
  E_LAST_ADMIN: SETUP,
  E_PASSWORD: SETUP,
  E_NO_ENGINE: SETUP,
  E_NO_REGISTRY: SETUP,
  // registry migrate: a registry to open with this version first, a target database that is not empty (E_MIGRATE_COPY/VERIFY: 1).
  E_REGISTRY_VERSION: SETUP,
  E_MIGRATE_NOT_EMPTY: SETUP,
  E_CONFIRM: SETUP,
  // audit verify --since / checkpoint (server/commands/audit-chain.ts): a checkpoint to name, a log with no entry yet.
  // A log that does not verify (E_AUDIT_CHAIN, E_AUDIT_MALFORMED, E_AUDIT_CHECKPOINT, E_AUDIT_ACK, E_AUDIT_REPORT) is 1.
  E_AUDIT_NO_CHECKPOINT: SETUP,
  E_AUDIT_EMPTY: SETUP, // a destructive rollout to many devices without --yes (server/rollouts/confirm.ts)
  // Releases and upgrades (server/releases, server/core/actions/upgrade-params.ts): a tree, file, key or release to fix.
  E_RELEASE_TREE: SETUP,
  E_RELEASE_TOO_LARGE: SETUP,
  E_RELEASE_EXISTS: SETUP,
  E_RELEASE_IN_USE: SETUP,
  E_RELEASE_SIGNATURE: SETUP,
  E_RELEASE_ARTIFACT: SETUP,
  E_RELEASE_KEY: SETUP,
  E_NO_RELEASE_KEY: SETUP,
  E_NO_RELEASE: SETUP,
  E_PACK: SETUP,
  E_ARCH_UNKNOWN: SETUP,
  E_TIMEOUT: SEND_EXIT.timeout,
};

/** The exit status `provision-server` ends with after `err`. */
export function serverExitStatus(err: unknown): number {
  return exitStatusOf(err, SERVER_EXIT_STATUSES);
}
