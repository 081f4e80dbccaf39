/**
 * One rollout: progress bar, counts by state, rate and abort criteria, its targets; pause / resume / cancel for an
 * operator. Live: each `rollout` event from /events for this id replaces the view (no reload, no polling).
 */
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, errorText, seg } from '../api.js';
import { Badge } from '../components/badge.js';
import { ErrorLine } from '../components/error.js';
import { Progress } from '../components/progress.js';
import { Table } from '../components/table.js';
import { json, when } from '../format.js';
import { useLive } from '../live.js';
import { can } from '../roles.js';
import { href } from '../router.js';
import type { Role, RolloutView } from '../types.js';

type Target = NonNullable<RolloutView['targets']>[number];

const FINAL = ['completed', 'aborted', 'cancelled'];

/** The selector in words, as the CLI prints it (server/rollouts/rollout-views.ts selectorText). */
function selectorText(s: Record<string, unknown>): string {
  if (s.all === true) return 'all devices';
  if (typeof s.userId === 'string' || typeof s.user_id === 'string') return `user ${String(s.userId ?? s.user_id)}`;
  if (typeof s.tag === 'string') return `tag ${s.tag}`;
  if (typeof s.retryOf === 'string') return `retry of ${s.retryOf}`;
  if (Array.isArray(s.devices)) return s.devices.length === 1 ? `device ${String(s.devices[0])}` : `${s.devices.length} named devices`;
  return json(s);
}

function rateText(r: RolloutView): string {
  const rate = r.rate_per_min === null ? 'no limit' : `${r.rate_per_min}/min`;
  const now = r.current_rate_per_min !== null && r.current_rate_per_min !== r.rate_per_min ? ` (now ${r.current_rate_per_min}/min)` : '';
  const ramp = r.ramp ? `, ramp from ${r.ramp.from_per_min}/min ×${r.ramp.factor}` : '';
  return `${rate}${now}${ramp}; ${r.concurrency} in flight at most`;
}

export function RolloutPage({ id, role }: { id: string; role: Role }): VNode {
  const [r, setR] = useState<RolloutView | null>(null);
  const [targets, setTargets] = useState<Target[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const load = (): void => {
    api
      .get<RolloutView>(`/rollouts/${seg(id)}`, { targets: 1 })
      .then((v) => {
        setR(v);
        setTargets(v.targets ?? []);
      })
      .catch((err: unknown) => setError(errorText(err)));
  };
  useEffect(load, [id]);
  useLive(
    {
      rollout: (v) => {
        if (v.id !== id) return;
        setR((old) => ({ ...v, targets: old?.targets ?? [] }));
      },
    },
    [id],
  );
  // Targets change with the counts: reread them when the counts move (the event carries counts, not targets).
  const countsKey = r ? json(r.counts) : '';
  useEffect(() => {
    if (!r) return;
    api
      .get<RolloutView>(`/rollouts/${seg(id)}`, { targets: 1 })
      .then((v) => setTargets(v.targets ?? []))
      .catch(() => undefined);
  }, [countsKey]);

  const control = async (what: 'pause' | 'resume' | 'cancel'): Promise<void> => {
    setBusy(true);
    setError(null);
    try {
      const v = await api.post<RolloutView>(`/rollouts/${seg(id)}/${what}`);
      setR((old) => ({ ...v, targets: old?.targets ?? [] }));
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };

  if (!r)
    return html`<section>
      <h1>Rollout <code>${id}</code></h1>
      <${ErrorLine} error=${error} />${error ? null : html`<p aria-busy="true">Loading…</p>`}
    </section>`;
  const open = r.finished_at === null && !FINAL.includes(r.state);
  const operator = can(role, 'operator');
  const counts = Object.entries(r.counts).filter(([, n]) => n > 0);

  return html`<section aria-labelledby="rollout-title">
    <p><a href="#/rollouts">← Rollouts</a></p>
    <h1 id="rollout-title">Rollout <code>${r.id}</code>: ${r.action}</h1>
    <${ErrorLine} error=${error} />
    <div class="rollout-head">
      <span class="rollout-state">State: <${Badge} text=${r.result ?? r.state} /></span>
      ${r.state_reason ? html`<span class="muted">${r.state_reason}</span>` : null}
    </div>
    <div class="big-progress"><${Progress} done=${r.progress.done} total=${r.progress.total} label="Rollout progress" /></div>
    ${
      operator && open
        ? html`<div class="actions" role="group" aria-label="Control the rollout">
            ${
              r.state === 'paused'
                ? html`<button type="button" disabled=${busy} onClick=${() => control('resume')}>Resume</button>`
                : html`<button type="button" disabled=${busy} onClick=${() => control('pause')}>Pause</button>`
            }
            <button type="button" class="danger" disabled=${busy} onClick=${() => control('cancel')}>Cancel rollout</button>
          </div>`
        : null
    }
    <div class="grid">
      <dl class="facts" aria-label="Counts by state">
        ${
          counts.length
            ? counts.map(
                ([k, n]) =>
                  html`<dt>${k}</dt>
                    <dd class=${`count-${k.replace(/\W/g, '_')}`}>${n}</dd>`,
              )
            : html`<dt>targets</dt>
                <dd>none</dd>`
        }
      </dl>
      <dl class="facts">
        <dt>Targets</dt>
        <dd>${selectorText(r.selector)}</dd>
        <dt>Params</dt>
        <dd><code>${json(r.params)}</code></dd>
        <dt>Rate</dt>
        <dd>${rateText(r)}</dd>
        <dt>Abort</dt>
        <dd>${r.abort ? `at ${r.abort.percent}% rejected or failed, after ${r.abort.min_results} results` : 'never'}</dd>
        <dt>Created</dt>
        <dd>${when(r.created_at)}</dd>
        <dt>Deadline</dt>
        <dd>${when(r.deadline_at)}</dd>
        <dt>Finished</dt>
        <dd>${when(r.finished_at)}</dd>
      </dl>
    </div>
    <h2>Targets</h2>
    <${Table}
      caption="Targets"
      columns=${[
        { key: 'dev', label: 'Device', cell: (t: Target) => html`<a href=${href(['devices', t.device_id])}>${t.device_id}</a>` },
        { key: 'state', label: 'State', cell: (t: Target) => html`<${Badge} text=${t.state} />` },
        { key: 'code', label: 'Code', cell: (t: Target) => t.code ?? '-' },
        { key: 'attempts', label: 'Attempts', cell: (t: Target) => String(t.attempts) },
        { key: 'updated', label: 'Updated', cell: (t: Target) => when(t.updated_at) },
      ]}
      rows=${targets.slice(0, 200)}
      rowKey=${(t: Target) => t.device_id}
      empty="No targets."
    />
    ${targets.length > 200 ? html`<p class="muted">First 200 of ${targets.length} targets shown.</p>` : null}
  </section>`;
}
