/**
 * What the pipeline knows of an action: one descriptor per action, read by
 * agent/actions/pipeline.ts, which never branches on an action's name. The
 * schema of each action's `params` is the protocol's (protocol/params.ts:
 * ParamsByAction and validateParams, shared with the server); the claims an
 * action's `apply` gets are typed by it (CommandClaims<A>), so no cast is needed.
 * Adding an action: its file here with its descriptor, one line in index.ts.
 */
import type { Action, CommandClaims } from '../../protocol/index.js';
import type { AgentRuntime } from '../runtime.js';
import type { AgentState, PendingUpgrade, StoredBroker } from '../store/state.js';
import type { Outcome } from './outcome.js';

/** What an action may ask of the agent beyond the runtime. */
export interface ActionContext {
  readonly rt: AgentRuntime;
  /** Completes the enrollment (token removed, LED, sensor) and tells the agent's listeners (request, before the PUBACK). */
  readonly onProvisioned: (userId: string) => Promise<void>;
  /** Switches to the stored broker settings and waits until subscribed, up to `timeoutMs` (update). */
  readonly switchBroker: (settings: StoredBroker | undefined, timeoutMs: number) => Promise<boolean>;
  /** Starts an accepted upgrade's download in the background (upgrade, after the PUBACK). */
  readonly beginUpgrade: (pending: PendingUpgrade) => void;
}

/**
 * Who publishes the ack of an applied command: `pipeline`, after the PUBACK
 * (the outcome's `ackToken` when the action sealed it in advance, e.g. rotate
 * with the old key, delete before the keys go); `action`, the outcome's
 * `afterAck` (update: a broker change is acked on whichever broker stays).
 * A refused or failed command is always acked by the pipeline.
 */
export type AckPolicy = 'pipeline' | 'action';

export interface ActionDescriptor<A extends Action> {
  readonly action: A;
  /** Refused (E_NOT_PROVISIONED, recorded) on a device that is not provisioned. */
  readonly needsProvisioned: boolean;
  /** Runs the action's hook (hooks_dir/<action>) first; a failing hook fails the command. */
  readonly runsHook: boolean;
  readonly ack: AckPolicy;
  /**
   * When applied under the current encryption key, the previous one (kept
   * after a rotate) is removed: the server uses the new key. Not for rotate
   * (its own new key is not in use yet) nor delete (no keys are left).
   */
  readonly retiresPreviousKey: boolean;
  /** The outcome's state change is saved when the command failed too (rotate: clears the marker of a failed rotation). */
  readonly savesFailedChange: boolean;
  /**
   * True while the command `jti` is still being carried out after its PUBACK (upgrade: until its
   * final ack): a redelivered copy is then only logged, never re-acked with the interim record.
   */
  readonly inProgress?: (state: AgentState, jti: string) => boolean;
  readonly apply: (ctx: ActionContext, claims: CommandClaims<A>) => Promise<Outcome>;
}

/** One descriptor per action. */
export type ActionDescriptors = { readonly [A in Action]: ActionDescriptor<A> };

/** Applies a command with its action's descriptor. */
export function applyCommand<A extends Action>(descriptors: ActionDescriptors, ctx: ActionContext, claims: CommandClaims<A>): Promise<Outcome> {
  const descriptor: ActionDescriptor<A> = descriptors[claims.action];
  return descriptor.apply(ctx, claims);
}
