/**
 * `upgrade`: placeholder of the protocol branch, refused until the agent side
 * lands (branch up-agent replaces this file).
 */
import type { ActionDescriptor } from './descriptor.js';
import { ActionRefused } from './outcome.js';

export const upgradeAction: ActionDescriptor<'upgrade'> = {
  action: 'upgrade',
  needsProvisioned: true,
  runsHook: false,
  ack: 'pipeline',
  retiresPreviousKey: false,
  savesFailedChange: false,
  apply: () => Promise.reject(new ActionRefused('E_UPGRADE_UNSUPPORTED', 'this agent cannot install releases yet')),
};
