/** `selftest`: runs the on-device self-test and returns its report in the ack. */
import type { ActionContext, ActionDescriptor } from './descriptor.js';
import type { Outcome } from './outcome.js';
import { runSelftest } from '../selftest.js';
import { writeSelftestRecord } from '../store/selftest-record.js';

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
  // For the reports (agent/net/reporter.ts); a failure to record it does not fail the command.
  await writeSelftestRecord(rt.store.dir, report.ok).catch((err: unknown) =>
    rt.log.warn('self-test outcome not recorded', { reason: err instanceof Error ? err.message : String(err) }),
  );
  const failed = report.checks.filter((c) => c.status === 'fail').map((c) => c.id);
  return {
    status: 'applied',
    code: 'OK',
    detail: report.ok ? 'self-test passed' : `self-test: ${failed.length} required check(s) failed: ${failed.join(', ')}`,
    result: { report: { ok: report.ok, checks: report.checks.map((c) => ({ id: c.id, status: c.status, reason: c.reason })) } },
  };
}
