/** Every action the agent applies, by name: the pipeline reads these descriptors (descriptor.ts). */
import type { ActionDescriptors } from './descriptor.js';
import { deleteAction } from './delete.js';
import { requestAction } from './request.js';
import { rotateAction } from './rotate.js';
import { selftestAction } from './selftest.js';
import { updateAction } from './update.js';
import { upgradeAction } from './upgrade.js';

export const ACTION_DESCRIPTORS: ActionDescriptors = {
  request: requestAction,
  update: updateAction,
  rotate: rotateAction,
  delete: deleteAction,
  selftest: selftestAction,
  upgrade: upgradeAction,
};
