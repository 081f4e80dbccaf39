/** `selftest`: runs the on-device self-test and returns its report in the ack. */
import type { CommandClaims } from '../../protocol/index.js';
import type { Outcome } from './outcome.js';
import type { AgentRuntime } from '../runtime.js';
import { runSelftest } from '../selftest.js';

export async function applySelftest(rt: AgentRuntime, _claims: CommandClaims): Promise<Outcome> {
  const report = await runSelftest({ config: rt.config, configPath: rt.config.path, running: rt });
  const failed = report.checks.filter((c) => c.status === 'fail').map((c) => c.id);
  return {
    status: 'applied',
    code: 'OK',
    detail: report.ok ? 'self-test passed' : `self-test: ${failed.length} required check(s) failed: ${failed.join(', ')}`,
    result: { report: { ok: report.ok, checks: report.checks.map((c) => ({ id: c.id, status: c.status, reason: c.reason })) } },
  };
}
