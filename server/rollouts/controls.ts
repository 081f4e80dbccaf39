/** Which rollout states pause, resume and cancel apply to, and what they lead to (the CLI and the HTTP API). */
import type { RolloutState } from '../storage/records.js';

export const ROLLOUT_CONTROLS: Record<'pause' | 'resume' | 'cancel', { from: RolloutState[]; to: RolloutState }> = {
  pause: { from: ['running'], to: 'paused' },
  resume: { from: ['paused'], to: 'running' },
  cancel: { from: ['running', 'paused', 'aborted'], to: 'cancelled' },
};
