/** `selftest`: runs the on-device self-test and returns its report in the ack. */
import type { ActionContext, ActionDescriptor } from './descriptor.js';
import type { Outcome } from './outcome.js';
import { runSelftest } from '../selftest.js';

export const selftestAction: ActionDescriptor<'selftest'> = {
  action: 'selftest',
  needsProvisioned: false,
  runsHook: false,
  ack: 'pipeline',
  retiresPreviousKey: true,
  savesFailedChange: false,
  apply: applySelftest,
};

export async function applySelftest({ rt }: ActionContext): Promise<Outcome> {
  const report = await runSelftest({ config: rt.config, configPath: rt.config.path, running: rt });
  const failed = report.checks.filter((c) => c.status === 'fail').map((c) => c.id);
  return {
    status: 'applied',
    code: 'OK',
    detail: report.ok ? 'self-test passed' : `self-test: ${failed.length} required check(s) failed: ${failed.join(', ')}`,
    result: { report: { ok: report.ok, checks: report.checks.map((c) => ({ id: c.id, status: c.status, reason: c.reason })) } },
  };
}
