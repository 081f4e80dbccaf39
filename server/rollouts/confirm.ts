/**
 * The confirmation a destructive rollout needs (the action table's
 * `destructive`, server/core/actions/table.ts). `delete` wipes a board's keys
 * and decommissions it: getting it back means re-flashing it by hand, so a
 * delete to more than one device is refused unless confirmed (the CLI's --yes,
 * or typing the count at a terminal; the HTTP API's `"confirm": true` or the
 * count). `rotate` is not destructive: the board stays reachable under its new
 * keys, which the server records from the verified ack. A dry run never needs it.
 */
import { CodedError } from '../../protocol/index.js';
import { isDestructive } from '../core/actions/table.js';

/** Whether sending `action` to `count` devices needs a confirmation (its `destructive` in the action table). */
export function needsConfirmation(action: string, count: number): boolean {
  return isDestructive(action) && count > 1;
}

/**
 * Throws E_CONFIRM unless `given` confirms `action` to `count` devices: true,
 * or the count itself. `how` says how to confirm (`--yes`, `"confirm": true`).
 */
export function checkConfirmation(action: string, count: number, given: boolean | number | undefined, how: string): void {
  if (!needsConfirmation(action, count) || given === true || given === count) return;
  const wrong = typeof given === 'number' ? ` (the count given, ${given}, is not ${count})` : '';
  throw new CodedError(
    'E_CONFIRM',
    `${action} to ${count} devices wipes their keys and decommissions them (each must be re-flashed to come back)${wrong}: nothing sent; confirm with ${how}`,
  );
}
