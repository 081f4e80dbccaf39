/**
 * Reports: device -> server presence and reported state, signed by the device
 * and encrypted to the server like an ack. The agent sends one on every
 * (re)connect (`connect`), every `interval_s` (`interval`), and leaves one as
 * its MQTT last will (`offline`), sealed when it connects.
 *
 * Order: every report carries its position (`run`, `conn`, `n`), compared in
 * that order: `run` counts the agent's starts (persisted by the agent, +1 at
 * every start), `conn` its connections within the run, `n` the reports within
 * the connection (1 for `connect`); an `offline` report (`n` 0) ranks after
 * every report of its connection and before the next connection's, because
 * the broker publishes a will at an unknown later time. The server records the
 * highest position accepted per device and drops any report that is not newer
 * (a replay, or a will of a connection left long ago). Reports of agents older
 * than the position (no `run`, no `n`) are legacy: see docs/PROTOCOL.md.
 */
import { randomUUID } from 'node:crypto';
import { ClaimReader, checkTimes } from './claims.js';
import { ProtocolError } from './errors.js';
import { openSealed } from './open.js';
import type { OpenAckOptions } from './ack.js';
import { sealClaims, type SealKeys } from './seal.js';
import { assertValidId } from './topics.js';
import { RELEASE_ARCHES, type ReleaseArch } from './release.js';

export const REPORT_REASONS = ['connect', 'interval', 'offline'] as const;
export type ReportReason = (typeof REPORT_REASONS)[number];
/** Shortest and longest report interval an agent may announce. */
export const MIN_REPORT_INTERVAL_SECONDS = 10;
export const MAX_REPORT_INTERVAL_SECONDS = 24 * 3600;
const DIGEST = /^sha256:[0-9a-f]{64}$/;
const VERSION_MAX = 64;

export interface ReportSelftest {
  ok: boolean;
  /** When it ran, seconds since the epoch by the board's clock. */
  at: number;
}

export const UPGRADE_PHASES = ['download', 'staged', 'trial'] as const;
export type UpgradePhase = (typeof UPGRADE_PHASES)[number];

/** An upgrade under way on the board: the version it goes to, the phase, and (download) chunks done of total. */
export interface ReportUpgrade {
  to: string;
  phase: UpgradePhase;
  done?: number;
  total?: number;
}

export interface ReportClaims {
  iss: string;
  aud: string;
  iat: number;
  jti: string;
  reason: ReportReason;
  /** Random id of this agent process; constant across its reconnects. */
  session: string;
  /** Connection number within the session, 1 on the first connect. */
  conn: number;
  /** The agent's run (start) number, persisted across restarts; absent in a legacy report. */
  run?: number;
  /** The report's number within its connection (connect 1, then +1); 0 in an `offline` report; absent in a legacy report. */
  n?: number;
  /** How often the agent sends an `interval` report while connected. */
  interval_s: number;
  agent_version: string;
  node_version: string;
  /** Highest command seq the board has accepted (0 before the first). */
  last_seq: number;
  /** Key ids the board holds now. */
  kids: { sig: string; enc: string };
  /** `sha256:` and the hex SHA-256 of the board's settings file as applied. */
  settings_digest: string;
  uptime_s: number;
  /** The last self-test's outcome, or null when none has run. */
  selftest: ReportSelftest | null;
  /** The upgrade under way, absent or null when none (agents before upgrades never send it). */
  upgrade?: ReportUpgrade | null;
  /** The board's release architecture (which build of a release it takes); absent from agents before upgrades. */
  arch?: ReleaseArch;
}

export interface ReportInput {
  deviceId: string;
  serverId: string;
  reason: ReportReason;
  session: string;
  conn: number;
  /** The report's position (see above); omitted only to make a legacy report (tests). */
  order?: { run: number; n: number };
  intervalSeconds: number;
  agentVersion: string;
  nodeVersion: string;
  lastSeq: number;
  kids: { sig: string; enc: string };
  settingsDigest: string;
  uptimeSeconds: number;
  selftest: ReportSelftest | null;
  upgrade?: ReportUpgrade | null;
  arch?: ReleaseArch;
  now?: number;
}

function checkInterval(s: number): void {
  if (!Number.isSafeInteger(s) || s < MIN_REPORT_INTERVAL_SECONDS || s > MAX_REPORT_INTERVAL_SECONDS) {
    throw new ProtocolError('E_CLAIMS', `report interval must be an integer of ${MIN_REPORT_INTERVAL_SECONDS}-${MAX_REPORT_INTERVAL_SECONDS} s`);
  }
}

function checkOrder(reason: ReportReason, run: number, n: number): void {
  if (!Number.isSafeInteger(run) || run < 1 || !Number.isSafeInteger(n) || n < 0) {
    throw new ProtocolError('E_CLAIMS', 'report "run" must be an integer >= 1 and "n" an integer >= 0');
  }
  if ((reason === 'offline') !== (n === 0)) throw new ProtocolError('E_CLAIMS', 'report "n" is 0 exactly in an offline report');
}

/** Where a report stands in its device's sequence of reports: compared by run, then conn, then rank. */
export interface ReportPosition {
  run: number;
  conn: number;
  /** `n`, or OFFLINE_RANK for an `offline` report (after every report of its connection). */
  rank: number;
}

/** The rank of an `offline` report within its connection: after any `n` an agent can reach. */
export const OFFLINE_RANK = Number.MAX_SAFE_INTEGER;

/** The report's position, or undefined for a legacy report (no `run`/`n`). */
export function reportPosition(claims: Pick<ReportClaims, 'reason' | 'conn' | 'run' | 'n'>): ReportPosition | undefined {
  if (claims.run === undefined || claims.n === undefined) return undefined;
  return { run: claims.run, conn: claims.conn, rank: claims.reason === 'offline' ? OFFLINE_RANK : claims.n };
}

/** Negative when `a` is older than `b`, 0 when they are the same position, positive when `a` is newer. */
export function compareReportPositions(a: ReportPosition, b: ReportPosition): number {
  return a.run - b.run || a.conn - b.conn || Math.sign(a.rank - b.rank);
}

export async function sealReport(input: ReportInput, keys: SealKeys): Promise<{ token: string; claims: ReportClaims }> {
  assertValidId(input.deviceId, 'device id');
  assertValidId(input.serverId, 'server id');
  checkInterval(input.intervalSeconds);
  if (!DIGEST.test(input.settingsDigest)) throw new ProtocolError('E_CLAIMS', 'settings digest must be "sha256:" and 64 hex digits');
  if (input.order) checkOrder(input.reason, input.order.run, input.order.n);
  const claims: ReportClaims = {
    iss: input.deviceId,
    aud: input.serverId,
    iat: Math.floor((input.now ?? Date.now()) / 1000),
    jti: randomUUID(),
    reason: input.reason,
    session: input.session,
    conn: input.conn,
    ...(input.order ? { run: input.order.run, n: input.order.n } : {}),
    interval_s: input.intervalSeconds,
    agent_version: input.agentVersion.slice(0, VERSION_MAX),
    node_version: input.nodeVersion.slice(0, VERSION_MAX),
    last_seq: input.lastSeq,
    kids: { sig: input.kids.sig, enc: input.kids.enc },
    settings_digest: input.settingsDigest,
    uptime_s: Math.max(0, Math.floor(input.uptimeSeconds)),
    selftest: input.selftest ? { ok: input.selftest.ok, at: Math.floor(input.selftest.at) } : null,
    ...(input.upgrade !== undefined ? { upgrade: input.upgrade === null ? null : checkUpgrade(input.upgrade) } : {}),
    ...(input.arch !== undefined ? { arch: checkArch(input.arch) } : {}),
  };
  return { token: await sealClaims({ ...claims }, keys), claims };
}

function checkArch(value: unknown): ReleaseArch {
  if (typeof value !== 'string' || !(RELEASE_ARCHES as readonly string[]).includes(value)) {
    throw new ProtocolError('E_CLAIMS', `claim "arch" must be one of ${RELEASE_ARCHES.join(', ')}`);
  }
  return value as ReleaseArch;
}

function checkUpgrade(value: unknown): ReportUpgrade {
  const fail = (): ProtocolError => new ProtocolError('E_CLAIMS', 'claim "upgrade" must be null or { to: version, phase, done?, total? }');
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw fail();
  const o = value as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!['to', 'phase', 'done', 'total'].includes(k)) throw fail();
  if (typeof o.to !== 'string' || o.to.length === 0 || o.to.length > VERSION_MAX) throw fail();
  if (typeof o.phase !== 'string' || !(UPGRADE_PHASES as readonly string[]).includes(o.phase)) throw fail();
  const out: ReportUpgrade = { to: o.to, phase: o.phase as UpgradePhase };
  for (const k of ['done', 'total'] as const) {
    const v = o[k];
    if (v === undefined) continue;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw fail();
    out[k] = v;
  }
  return out;
}

/** Opened like an ack: the server's decryption keys, the device's signing keys. */
export type OpenReportOptions = OpenAckOptions;

function readSelftest(r: ClaimReader): ReportSelftest | null {
  const v = r.raw.selftest;
  if (v === null) return null;
  const o = r.object('selftest');
  if (typeof o.ok !== 'boolean' || typeof o.at !== 'number' || !Number.isSafeInteger(o.at) || o.at < 0) {
    throw new ProtocolError('E_CLAIMS', 'claim "selftest" must be null or { ok: boolean, at: integer }');
  }
  return { ok: o.ok, at: o.at };
}

export async function openReport(input: string | Uint8Array, opts: OpenReportOptions): Promise<{ claims: ReportClaims; signerKid: string; jws: string }> {
  const v = await openSealed(input, opts);
  const r = new ClaimReader(v.payload);
  const reason = r.string('reason', 16);
  if (!(REPORT_REASONS as readonly string[]).includes(reason)) throw new ProtocolError('E_CLAIMS', `report reason "${reason}" is unknown`);
  const kids = r.object('kids');
  if (typeof kids.sig !== 'string' || typeof kids.enc !== 'string' || kids.sig.length > 128 || kids.enc.length > 128) {
    throw new ProtocolError('E_CLAIMS', 'claim "kids" must be { sig: string, enc: string }');
  }
  const settingsDigest = r.string('settings_digest', 71);
  if (!DIGEST.test(settingsDigest)) throw new ProtocolError('E_CLAIMS', 'claim "settings_digest" must be "sha256:" and 64 hex digits');
  const claims: ReportClaims = {
    iss: r.string('iss', 64),
    aud: r.string('aud', 64),
    iat: r.integer('iat'),
    jti: r.uuid('jti'),
    reason: reason as ReportReason,
    session: r.uuid('session'),
    conn: r.integer('conn', 1),
    interval_s: r.integer('interval_s'),
    agent_version: r.string('agent_version', VERSION_MAX),
    node_version: r.string('node_version', VERSION_MAX),
    last_seq: r.integer('last_seq', 0),
    kids: { sig: kids.sig, enc: kids.enc },
    settings_digest: settingsDigest,
    uptime_s: r.integer('uptime_s', 0),
    selftest: readSelftest(r),
  };
  checkInterval(claims.interval_s);
  const upgrade = r.raw.upgrade;
  if (upgrade !== undefined) claims.upgrade = upgrade === null ? null : checkUpgrade(upgrade);
  if (r.raw.arch !== undefined) claims.arch = checkArch(r.raw.arch);
  const run = r.optionalInteger('run', 1);
  const n = r.optionalInteger('n', 0);
  if ((run === undefined) !== (n === undefined)) throw new ProtocolError('E_CLAIMS', 'claims "run" and "n" go together');
  if (run !== undefined && n !== undefined) {
    checkOrder(claims.reason, run, n);
    claims.run = run;
    claims.n = n;
  }
  if (claims.aud !== opts.serverId) throw new ProtocolError('E_AUDIENCE', `report aud "${claims.aud}" is not ${opts.serverId}`);
  if (opts.deviceId !== undefined && claims.iss !== opts.deviceId)
    throw new ProtocolError('E_ISSUER', `report from "${claims.iss}" arrived for ${opts.deviceId}`);
  checkTimes(claims.iat, undefined, opts.clock ?? { trusted: false });
  return { claims, signerKid: v.signerKid, jws: v.jws };
}
