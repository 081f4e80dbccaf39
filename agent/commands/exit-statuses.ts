/**
 * The exit status `sensor-agent` ends with for each refusal code (any other: 1).
 * Only the CLI edge reads it (agent/cli.ts, and tests of what a user sees):
 * 2 is bad usage or configuration, which neither a retry nor a systemd restart
 * fixes (the unit has RestartPreventExitStatus=2 10); 10 is decommissioned.
 */
import { INPUT_EXIT_STATUSES, exitStatusOf, type ExitStatuses } from '../../lib/cli.js';
import { EXIT_DECOMMISSIONED } from '../actions/delete.js';
import { KEYSTORE_ERROR_CODES } from '../store/keystore-errors.js';
import { STATE_ERROR_CODES } from '../store/state.js';

const SETUP = 2;

export const AGENT_EXIT_STATUSES: ExitStatuses = {
  ...INPUT_EXIT_STATUSES,
  ...Object.fromEntries(Object.keys(KEYSTORE_ERROR_CODES).map((code) => [code, SETUP])),
  ...Object.fromEntries(Object.keys(STATE_ERROR_CODES).map((code) => [code, SETUP])),
  E_CONFIG: SETUP,
  E_TRUST: SETUP,
  E_TOKEN: SETUP,
  E_NO_KEYS: SETUP,
  E_NOT_ENROLLED: SETUP,
  E_STATE_LOST: SETUP,
  E_JOSE_UNPATCHED: SETUP,
  E_DECOMMISSIONED: EXIT_DECOMMISSIONED,
};

/** The exit status `sensor-agent` ends with after `err`. */
export function agentExitStatus(err: unknown): number {
  return exitStatusOf(err, AGENT_EXIT_STATUSES);
}
