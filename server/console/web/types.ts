/** The API's JSON views, as far as the console reads them (server/http/record-views.ts and friends). */

export type Role = 'viewer' | 'operator' | 'admin';

export interface SessionView {
  name: string;
  role: Role;
}

export interface LastCommand {
  jti: string;
  action: string;
  status: string;
  code: string | null;
  created_at: string | null;
  acked_at: string | null;
}

export interface DeviceView {
  id: string;
  user_id: string | null;
  state: string;
  tags: string[];
  presence: string;
  version: string | null;
  arch: string | null;
  last_seen_at: string | null;
  report_interval_s: number | null;
  reported: {
    reason: string;
    agent_version: string | null;
    node_version: string | null;
    last_seq: number | null;
    kids: { sig: string | null; enc: string | null };
    kids_match: boolean;
    settings_digest: string | null;
    uptime_s: number | null;
    selftest: { ok: boolean; at: string | null } | null;
  } | null;
  signing_kid: string | null;
  encryption_kid: string | null;
  keys: { kid: string; use: string; alg: string; status: string; added_at: string | null; retired_at: string | null }[];
  created_at: string | null;
  enrolled_at: string | null;
  decommissioned_at: string | null;
  security_flag: ({ at: string | null; event: string } & Record<string, unknown>) | null;
  last_command?: LastCommand | null;
}

export interface DevicePage {
  total: number;
  offset: number;
  limit: number;
  devices: DeviceView[];
}

export interface CommandView {
  jti: string;
  action: string;
  status: string;
  code: string | null;
  detail?: string | null;
  created_at: string | null;
  sent_at: string | null;
  acked_at: string | null;
  expires_at?: string | null;
}

export type Counts = Record<string, number>;

export interface RolloutView {
  id: string;
  action: string;
  params: unknown;
  selector: Record<string, unknown>;
  state: string;
  state_reason: string | null;
  result: string | null;
  created_at: string | null;
  finished_at: string | null;
  deadline_at: string | null;
  rate_per_min: number | null;
  current_rate_per_min: number | null;
  ramp: { from_per_min: number; factor: number } | null;
  abort: { percent: number; min_results: number } | null;
  concurrency: number;
  counts: Counts;
  progress: { done: number; total: number };
  targets?: { device_id: string; state: string; code: string | null; attempts: number; updated_at: string | null }[];
}

export interface PlanView {
  dry_run: true;
  action: string;
  params: unknown;
  targets: { device_id: string; presence: string; agent_version: string | null; sendable: boolean; problem: { code: string; message: string } | null }[];
  targets_listed: number;
  summary: { targets: number; online: number; offline: number; unknown: number; not_sendable: number };
  warnings?: unknown[];
}

export interface AuditView {
  id: number;
  at: string;
  event: string;
  device_id: string | null;
  /** Who did it (the detail's `by`), null when not recorded. */
  by?: string | null;
  detail: Record<string, unknown>;
}

export interface OperatorView {
  name: string;
  role: Role;
  disabled?: boolean;
  disabled_at?: string | null;
  created_at?: string | null;
  last_login_at?: string | null;
}

export interface ApiTokenView {
  id: string;
  operator: string;
  label: string;
  created_at?: string | null;
  expires_at?: string | null;
  last_used_at?: string | null;
}

export interface EnrollmentTokenView {
  id?: string;
  device_id: string;
  user_id: string;
  created_at: string | null;
  expires_at: string | null;
  used_at: string | null;
  status: string;
}
