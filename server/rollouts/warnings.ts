/** Warnings about a rollout request that is valid but probably not what was meant (CLI: stderr; HTTP API: `warnings`). */
import type { RolloutPlan } from './plan.js';

export function planWarnings(plan: RolloutPlan): string[] {
  const s = plan.spec;
  const warnings: string[] = [];
  const n = plan.summary.targets;
  if (s.abortPercent !== undefined && s.abortMin > n) {
    warnings.push(
      `the abort rule needs ${s.abortMin} results (--abort-min, abort_min_results) but the rollout has ${n} target(s): ` +
        `it can never trip; lower --abort-min to ${n} or less`,
    );
  }
  return warnings;
}
