/**
 * The server's side of each action, one typed entry per protocol action (the
 * agent's side is agent/actions/): which user a command binds the device to
 * once applied, and what an applied ack does to the registry and keys. The
 * table is checked against the protocol's ACTIONS: an action added there is a
 * compile error here until its server side is written. The per-action lists
 * (destructive actions, ...) are derived from it: no action is chosen by name elsewhere.
 */
import { isAction, type AckClaims, type Action, type PublicJwk } from '../../../protocol/index.js';
import type { CommandRecord } from '../../storage/records.js';
import type { AckEffect } from '../../storage/types.js';

/** The keys a rotate ack reports, parsed and checked by the caller. */
export interface RotatedKeys {
  signing: PublicJwk;
  encryption: PublicJwk;
}

export interface ServerAction {
  /** The user the device is bound to once this command is applied (undefined: unchanged). */
  bindUser(userId: string, params: object): string | undefined;
  /**
   * Whether the command may name the device's new user in `params.user_id`
   * (an `update` re-binding the device): such a command needs no user of the
   * device's own, and a user named beside it must be the same.
   */
  readonly userInParams: boolean;
  /**
   * Whether it wipes the board's keys and decommissions it (getting it back
   * means re-flashing by hand): sent to more than one device only when
   * confirmed (rollouts/confirm.ts), never to more devices than were counted.
   */
  readonly destructive: boolean;
  /** Whether its params may name a stored release (`release`, `arch`, ...) that the server resolves per device. */
  readonly byRelease: boolean;
  /**
   * Whether the board answers this action's outcome only when it decided (an
   * upgrade: after its health gate), so its `rejected E_REPLAY` for a
   * redelivered copy is noted and not recorded as the outcome.
   */
  readonly outcomeLater: boolean;
  /** Whether an applied ack carries new keys (result.keys) to parse before it is recorded. */
  readonly reportsKeys: boolean;
  /** What an applied ack of `command` does, in the order the storage applies it. */
  ackEffects(command: CommandRecord, ack: AckClaims, keys: RotatedKeys | undefined): AckEffect[];
}

const bound = (command: CommandRecord): AckEffect[] => (command.bindUser !== null ? [{ kind: 'bind-user', userId: command.bindUser }] : []);

export const SERVER_ACTIONS = {
  request: {
    userInParams: false,
    destructive: false,
    byRelease: false,
    bindUser: (userId) => userId,
    reportsKeys: false,
    outcomeLater: false,
    ackEffects: (command) => [...bound(command), { kind: 'provisioned', userId: command.bindUser ?? command.userId }],
  },
  update: {
    userInParams: true,
    destructive: false,
    byRelease: false,
    bindUser: (_userId, params) => ('user_id' in params && typeof params.user_id === 'string' ? params.user_id : undefined),
    reportsKeys: false,
    outcomeLater: false,
    ackEffects: (command) => bound(command),
  },
  rotate: {
    userInParams: false,
    destructive: false,
    byRelease: false,
    bindUser: () => undefined,
    reportsKeys: true,
    outcomeLater: false,
    ackEffects: (command, _ack, keys) => [...bound(command), ...(keys ? [{ kind: 'keys-rotated', ...keys } as const] : [])],
  },
  delete: {
    userInParams: false,
    destructive: true,
    byRelease: false,
    bindUser: () => undefined,
    reportsKeys: false,
    outcomeLater: false,
    ackEffects: (command) => [...bound(command), { kind: 'decommissioned' }],
  },
  selftest: {
    userInParams: false,
    destructive: false,
    byRelease: false,
    bindUser: () => undefined,
    reportsKeys: false,
    outcomeLater: false,
    ackEffects: (command) => bound(command),
  },
  upgrade: {
    userInParams: false,
    destructive: false,
    byRelease: true,
    bindUser: () => undefined,
    reportsKeys: false,
    outcomeLater: true,
    ackEffects: (command, ack) => {
      const version = ack.result?.version;
      return [...bound(command), { kind: 'upgraded', version: typeof version === 'string' && version.length <= 64 ? version : null }];
    },
  },
} as const satisfies Record<Action, ServerAction>;

/** The server's side of `action`. */
export function serverAction(action: Action): ServerAction {
  return SERVER_ACTIONS[action];
}

/** The actions whose params may name a stored release (`byRelease`). */
export const RELEASE_ACTIONS: readonly Action[] = (Object.keys(SERVER_ACTIONS) as Action[]).filter((a) => SERVER_ACTIONS[a].byRelease);

/** Whether `action` (any text: a rollout's recorded action) is a destructive one. */
export function isDestructive(action: string): boolean {
  return isAction(action) && SERVER_ACTIONS[action].destructive;
}

/** The user a command's params name for the device (`userInParams` actions' `params.user_id`), else undefined. */
export function paramsUser(action: Action, params: unknown): string | undefined {
  if (!SERVER_ACTIONS[action].userInParams || typeof params !== 'object' || params === null) return undefined;
  const named = (params as { user_id?: unknown }).user_id;
  return typeof named === 'string' ? named : undefined;
}

/** The server's side of a recorded command's action (undefined: not an action this server knows). */
export function serverActionOf(command: Pick<CommandRecord, 'action'>): ServerAction | undefined {
  return isAction(command.action) ? SERVER_ACTIONS[command.action] : undefined;
}

/** What recording `ack` of `command` does when it is recorded now: its action's effects for an applied ack, else none. */
export function ackEffectsOf(command: CommandRecord, ack: AckClaims, keys?: RotatedKeys): AckEffect[] {
  return ack.status === 'applied' ? (serverActionOf(command)?.ackEffects(command, ack, keys) ?? []) : [];
}
