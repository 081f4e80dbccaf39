/** What applying an action produces: the ack fields, the state change, and the side effects around the PUBACK. */
import { CodedError, type AckStatus } from '../../protocol/index.js';
import type { AgentState } from '../store/state.js';

export interface Outcome {
  status: AckStatus;
  code: string;
  detail: string;
  result?: Record<string, unknown>;
  /** The state change, saved atomically together with the command's seq and jti. */
  mutate?: (draft: AgentState) => void;
  /** An ack sealed in advance (rotate: by the old key; delete: before the keys are wiped). */
  ackToken?: string;
  /** After the state is saved, before the PUBACK and the ack (delete: wipe the keys; request: complete the enrollment). */
  beforePuback?: () => Promise<void>;
  /** After the PUBACK and the pipeline's ack (GPIO, broker change, exit); with the descriptor's `ack: 'action'`, it publishes the ack itself. */
  afterAck?: () => Promise<void>;
}

/** An action's refusal of an authenticated command: its code goes into the `rejected` ack. */
export class ActionRefused extends CodedError {
  override readonly name = 'ActionRefused';
}

export function applied(detail: string, extra: Partial<Outcome> = {}): Outcome {
  return { status: 'applied', code: 'OK', detail, ...extra };
}
