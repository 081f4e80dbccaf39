/**
 * The records storage returns and takes, whichever implementation. (Defined
 * beside the SQLite registry they came from; both implementations and every
 * caller import them from here.)
 */
export type {
  AuditRecord,
  CommandRecord,
  DeviceFlag,
  DeviceKeyRecord,
  DeviceOrigin,
  DevicePresenceRecord,
  DeviceRecord,
  DeviceState,
  ReportedState,
} from '../registry/types.js';
export { DEVICE_STATES } from '../registry/types.js';
export type { AckRecordOutcome, NewCommand, NewDevice, ReportRecordOutcome } from '../registry/registry.js';
export type { Lease, RolloutRecord, RolloutSelector, RolloutSpec, RolloutState, TargetCounts, TargetRecord, TargetState } from '../registry/rollouts.js';
export { FINAL_TARGET_STATES, PLAN_CHUNK, ROLLOUT_STATES, TARGET_STATES, emptyCounts, selectorForAudit } from '../registry/rollouts.js';
export type { ReleaseRecord } from '../registry/releases.js';
export { UPGRADE_FETCH_GRACE_MS } from '../registry/releases.js';
export type { TokenListing, TokenStatus } from '../registry/token-list.js';
export type { AuditFilter } from '../registry/audit-query.js';
export { DEFAULT_AUDIT_LIMIT, MAX_AUDIT_LIMIT } from '../registry/audit-query.js';
export type { PlanSummary } from '../rollouts/plan.js';
