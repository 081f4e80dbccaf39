/** Rollouts and rollout plans as JSON (HTTP API, --json) and as text (the CLI). */
import { printable, table } from '../terminal-text.js';
import type { RolloutRecord, TargetCounts, TargetRecord } from '../storage/records.js';
import { currentRate } from './engine.js';
import type { RolloutPlan } from './plan.js';
import { outlookView, type RolloutOutlook } from './progress.js';

const iso = (t: number | null | undefined): string | null => (t === null || t === undefined ? null : new Date(t).toISOString());

/** Targets done (final) out of all. */
export function progressOf(counts: TargetCounts): { done: number; total: number } {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  return { done: total - counts.pending - counts.sending - counts.sent, total };
}

/**
 * What a finished rollout came to: `completed` only when every target applied;
 * `expired` when none applied and the deadline took them (no board refused);
 * `failed` when none applied otherwise; `partial` when some did not apply; an
 * aborted or cancelled one keeps that state. Null while it is not finished.
 */
export function rolloutResult(r: Pick<RolloutRecord, 'state' | 'finishedAt'>, counts: TargetCounts): string | null {
  if (r.finishedAt === null) return null;
  if (r.state !== 'completed') return r.state;
  const { total } = progressOf(counts);
  if (counts.applied === total) return 'completed';
  if (counts.applied === 0) return counts.expired > 0 && counts.rejected + counts.failed + counts.rolled_back === 0 ? 'expired' : 'failed';
  return 'partial';
}

/** A rollout's state in words: its state while open, its result once finished. */
export function stateLabel(r: Pick<RolloutRecord, 'state' | 'finishedAt'>, counts: TargetCounts): string {
  return rolloutResult(r, counts) ?? r.state;
}

/** `3 applied, 1 rejected, 16 not sent`: the counts that are not zero, in the summary's words. */
export function countsText(counts: TargetCounts): string {
  const parts: [string, number][] = [
    ['applied', counts.applied],
    ['rejected', counts.rejected],
    ['failed', counts.failed],
    ['rolled back', counts.rolled_back],
    ['expired', counts.expired],
    ['not sent', counts['not sent'] + counts.cancelled],
    ['in flight', counts.sending + counts.sent],
    ['waiting', counts.pending],
  ];
  const shown = parts.filter(([, n]) => n > 0);
  return shown.length ? shown.map(([k, n]) => `${n} ${k}`).join(', ') : 'no targets';
}

export function selectorText(r: Pick<RolloutRecord, 'selector'>): string {
  const s = r.selector;
  if ('all' in s) return 'all devices';
  if ('userId' in s) return `user ${s.userId}`;
  if ('tag' in s) return `tag ${s.tag}`;
  if ('retryOf' in s) return `retry of ${s.retryOf} (${s.states.join(', ')})`;
  return s.devices.length === 1 ? `device ${s.devices[0]}` : `${s.devices.length} named devices`;
}

export function rolloutView(r: RolloutRecord, counts: TargetCounts, targets?: TargetRecord[], outlook?: RolloutOutlook): Record<string, unknown> {
  return {
    id: r.id,
    action: r.action,
    params: r.params,
    user_id: r.userId ?? null,
    selector: r.selector,
    state: r.state,
    state_reason: r.stateReason,
    result: rolloutResult(r, counts),
    retry_of: r.retryOf,
    created_at: iso(r.createdAt),
    updated_at: iso(r.updatedAt),
    finished_at: iso(r.finishedAt),
    deadline_at: iso(r.deadlineAt),
    ttl_s: r.ttlSeconds,
    rate_per_min: r.ratePerMin ?? null,
    current_rate_per_min: currentRate(r, counts.applied) ?? null,
    ramp: r.rampFrom === undefined ? null : { from_per_min: r.rampFrom, factor: r.rampFactor ?? 2 },
    abort: r.abortPercent === undefined ? null : { percent: r.abortPercent, min_results: r.abortMin },
    concurrency: r.concurrency,
    counts,
    progress: progressOf(counts),
    ...(outlook ? { outlook: outlookView(outlook) } : {}),
    ...(targets
      ? {
          targets: targets.map((t) => ({
            device_id: t.deviceId,
            state: t.state,
            code: t.code,
            jti: t.jti,
            attempts: t.attempts,
            sent_at: iso(t.sentAt),
            updated_at: iso(t.updatedAt),
          })),
        }
      : {}),
  };
}

export function planView(plan: RolloutPlan): Record<string, unknown> {
  const s = plan.spec;
  return {
    dry_run: true,
    action: s.action,
    params: plan.params,
    user_id: s.userId ?? null,
    selector: s.selector,
    deadline_at: iso(s.deadlineAt),
    ttl_s: s.ttlSeconds,
    rate_per_min: s.ratePerMin ?? null,
    ramp: s.rampFrom === undefined ? null : { from_per_min: s.rampFrom, factor: s.rampFactor ?? 2 },
    abort: s.abortPercent === undefined ? null : { percent: s.abortPercent, min_results: s.abortMin },
    concurrency: s.concurrency,
    targets: plan.sample.map((t) => ({
      device_id: t.deviceId,
      presence: t.presence,
      last_seen_at: iso(t.lastSeenAt),
      agent_version: t.agentVersion,
      sendable: t.problem === null,
      problem: t.problem,
    })),
    // The first PLAN_SAMPLE targets are listed; the summary counts every one.
    targets_listed: plan.sample.length,
    summary: {
      targets: plan.summary.targets,
      online: plan.summary.online,
      offline: plan.summary.offline,
      unknown: plan.summary.unknown,
      not_sendable: plan.summary.notSendable,
    },
  };
}

function rateText(r: Pick<RolloutRecord, 'ratePerMin' | 'rampFrom' | 'rampFactor' | 'concurrency'>): string {
  const rate = r.ratePerMin === undefined ? 'no rate limit' : `${r.ratePerMin}/min`;
  const ramp = r.rampFrom === undefined ? '' : `, ramp from ${r.rampFrom}/min x${r.rampFactor ?? 2}`;
  return `${rate}${ramp}, ${r.concurrency} in flight at most`;
}

export function formatPlan(plan: RolloutPlan): string {
  const s = plan.spec;
  const v = planView(plan).summary as Record<string, number>;
  const lines = [
    `dry run: ${s.action} to ${plan.summary.targets} device(s) (${selectorText(s)}); nothing sealed, sent or recorded`,
    `params (validated): ${JSON.stringify(plan.params)}`,
    `delivery: until ${iso(s.deadlineAt)}, each command valid ${s.ttlSeconds} s; ${rateText(s)}`,
    `abort: ${s.abortPercent === undefined ? 'never' : `at ${s.abortPercent}% rejected or failed, after ${s.abortMin} results`}`,
    `presence: ${v.online} online, ${v.offline} offline, ${v.unknown} never reported${v.not_sendable ? `; ${v.not_sendable} would not be sent` : ''}`,
    '',
  ];
  const rows = [['DEVICE', 'PRESENCE', 'LAST SEEN', 'AGENT', 'CHECK']];
  for (const t of plan.sample) {
    rows.push([t.deviceId, t.presence, iso(t.lastSeenAt) ?? '-', t.agentVersion ?? '-', t.problem ? `${t.problem.code}: ${t.problem.message}` : 'ok']);
  }
  const more = plan.summary.targets - plan.sample.length;
  return `${lines.join('\n')}${table(rows)}${more > 0 ? `... and ${more} more (only the first ${plan.sample.length} are listed)\n` : ''}`;
}

/**
 * The summary at the end of `send` to many devices, and `rollout show` as text
 * (with the outlook: pending targets online and offline, next send, ETA).
 */
export function formatRolloutSummary(r: RolloutRecord, counts: TargetCounts, notApplied: TargetRecord[], outlook?: RolloutOutlook): string {
  const { total } = progressOf(counts);
  const result = rolloutResult(r, counts);
  const lines = [
    `rollout ${r.id}: ${r.action} to ${total} device(s) (${selectorText(r)}), ${stateLabel(r, counts)}${r.stateReason ? ` (${printable(r.stateReason)})` : ''}`,
    ...(result !== null ? [`result: ${countsText(counts)}`] : []),
    ...(r.retryOf !== null ? [`retry of rollout ${r.retryOf}`] : []),
    `delivery until ${iso(r.deadlineAt)}; ${rateText(r)}${r.abortPercent === undefined ? '' : `; abort at ${r.abortPercent}% after ${r.abortMin} results`}`,
    '',
    'outcome             devices',
  ];
  const waiting = counts.pending;
  const rows: [string, number][] = [
    ['applied', counts.applied],
    ['rejected', counts.rejected],
    ['failed', counts.failed],
    ['rolled back', counts.rolled_back],
    ['no answer', counts.sent + counts.sending],
    ...(outlook
      ? ([
          ['waiting, online', outlook.readyOnline],
          ['waiting, offline', outlook.waitingOffline],
          ...(outlook.waitingBackoff > 0 ? ([['waiting, backoff after E_EXPIRED', outlook.waitingBackoff]] as [string, number][]) : []),
        ] as [string, number][])
      : ([['waiting', waiting]] as [string, number][])),
    ['expired', counts.expired],
    ['not sent', counts['not sent'] + counts.cancelled],
  ];
  for (const [k, n] of rows) lines.push(`${k.padEnd(19)} ${String(n).padStart(7)}`);
  if (outlook && r.finishedAt === null) {
    lines.push(
      '',
      `waiting, online: held by the rate or the concurrency limit; waiting, offline: sent when the board reports in`,
      `next send: ${outlook.nextSendAt !== undefined && outlook.nextSendNote !== 'now' ? `${iso(outlook.nextSendAt)} (${outlook.nextSendNote})` : outlook.nextSendNote}`,
      `ETA: ${outlook.etaNote}`,
    );
  }
  if (notApplied.length) {
    lines.push('', 'device                            state       code');
    for (const t of notApplied.slice(0, 50)) lines.push(`${t.deviceId.padEnd(33)} ${targetStateText(t.state).padEnd(11)} ${printable(t.code ?? '')}`.trimEnd());
    if (notApplied.length > 50) lines.push(`... and ${notApplied.length - 50} more (provision-server rollout show ${r.id} --json)`);
  }
  if (r.finishedAt === null) {
    const open = waiting + counts.sent + counts.sending;
    if (open > 0) {
      lines.push(
        '',
        `${open} device(s) not finished: the rollout stays open until ${iso(r.deadlineAt)}; provision-server serve delivers to offline boards when they report in.`,
        `follow it with: provision-server rollout show ${r.id}`,
      );
    }
  }
  return `${lines.join('\n')}\n`;
}

/** A target state in the words of the summary's outcomes. */
export function targetStateText(state: TargetRecord['state']): string {
  return state === 'pending' ? 'waiting' : state === 'sent' || state === 'sending' ? 'no answer' : state;
}

export function formatRolloutList(items: { r: RolloutRecord; counts: TargetCounts }[]): string {
  // No DONE fraction: an aborted rollout's cancelled targets are "done" and would read as 20/20.
  const rows = [['ROLLOUT', 'ACTION', 'TARGETS', 'STATE', 'DEVICES', 'APPLIED', 'FAILED', 'EXPIRED', 'NOT SENT', 'OPEN', 'CREATED', 'DEADLINE']];
  for (const { r, counts } of items) {
    const p = progressOf(counts);
    rows.push([
      r.id,
      r.action,
      selectorText(r),
      stateLabel(r, counts),
      String(p.total),
      String(counts.applied),
      String(counts.rejected + counts.failed + counts.rolled_back),
      String(counts.expired),
      String(counts['not sent'] + counts.cancelled),
      String(counts.pending + counts.sending + counts.sent),
      iso(r.createdAt) ?? '',
      iso(r.deadlineAt) ?? '',
    ]);
  }
  return table(rows);
}

/** A one-line progress bar for a TTY. */
export function progressBar(done: number, total: number, width = 30): string {
  const filled = total === 0 ? width : Math.round((done / total) * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total}`;
}
