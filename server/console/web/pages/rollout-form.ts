/**
 * Starting a rollout to chosen devices: the form, then a dry run (`dry_run: true`) whose plan is shown, then
 * confirm -> POST /rollouts -> the rollout's page. Nothing is sent before the operator confirms the preview.
 */
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useState } from 'preact/hooks';
import { api, errorText } from '../api.js';
import { Dialog } from '../components/dialog.js';
import { ErrorLine } from '../components/error.js';
import { navigate } from '../router.js';
import type { PlanView, RolloutView } from '../types.js';

const ACTIONS = ['selftest', 'update', 'rotate', 'upgrade', 'request', 'delete'] as const;

export function RolloutForm({ devices, onClose }: { devices: string[]; onClose: () => void }): VNode {
  const [action, setAction] = useState<string>('selftest');
  const [params, setParams] = useState('{}');
  const [release, setRelease] = useState('');
  const [rate, setRate] = useState('');
  const [abort, setAbort] = useState('');
  const [plan, setPlan] = useState<PlanView | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const body = (): Record<string, unknown> => {
    let p: unknown;
    try {
      p = JSON.parse(params || '{}');
    } catch {
      throw new Error('params: not valid JSON');
    }
    const b: Record<string, unknown> = { action, params: p, selector: { devices } };
    if (action === 'upgrade' && release) b.release = release;
    if (rate) b.rate_per_min = Number(rate);
    if (abort) b.abort_percent = Number(abort);
    return b;
  };

  const preview = async (e: Event): Promise<void> => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      setPlan(await api.post<PlanView>('/rollouts', { ...body(), dry_run: true }));
    } catch (err) {
      setError(err instanceof Error && !('code' in err) ? `E_INPUT: ${err.message}` : errorText(err));
    } finally {
      setBusy(false);
    }
  };

  const start = async (): Promise<void> => {
    if (!plan) return;
    setBusy(true);
    setError(null);
    try {
      const r = await api.post<RolloutView>('/rollouts', { ...body(), confirm: plan.summary.targets });
      onClose();
      navigate(`#/rollouts/${encodeURIComponent(r.id)}`);
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };

  const field = (set: (v: string) => void) => (e: Event) => {
    set((e.target as HTMLInputElement).value);
    setPlan(null);
  };

  return html`<${Dialog} title=${`Start a rollout to ${devices.length} device(s)`} onClose=${onClose}>
    <form class="stack" onSubmit=${preview}>
      <label for="ro-action">Action</label>
      <select id="ro-action" value=${action} onChange=${field(setAction)}>
        ${ACTIONS.map((a) => html`<option value=${a}>${a}</option>`)}
      </select>
      ${
        action === 'upgrade'
          ? html`<label for="ro-release">Release</label><input id="ro-release" value=${release} onInput=${field(setRelease)} placeholder="0.3.0" />`
          : null
      }
      <label for="ro-params">Params (JSON)</label>
      <textarea id="ro-params" rows="3" value=${params} onInput=${field(setParams)}></textarea>
      <div class="row">
        <span><label for="ro-rate">Rate per minute</label><input id="ro-rate" type="number" min="1" value=${rate} onInput=${field(setRate)} /></span>
        <span><label for="ro-abort">Abort at % failed</label><input id="ro-abort" type="number" min="1" max="100" value=${abort} onInput=${field(setAbort)} /></span>
      </div>
      <${ErrorLine} error=${error} />
      <div class="actions">
        <button type="submit" disabled=${busy}>Preview (dry run)</button>
        <button type="button" class="secondary" onClick=${onClose}>Cancel</button>
      </div>
    </form>
    ${plan ? html`<${PlanPreview} plan=${plan} busy=${busy} onStart=${start} />` : null}
  </${Dialog}>`;
}

function PlanPreview({ plan, busy, onStart }: { plan: PlanView; busy: boolean; onStart: () => void }): VNode {
  const s = plan.summary;
  return html`<section class="plan" aria-labelledby="plan-title">
    <h3 id="plan-title">Dry run: ${plan.action} to ${s.targets} device(s)</h3>
    <p>${s.online} online, ${s.offline} offline, ${s.unknown} never reported${s.not_sendable ? `; ${s.not_sendable} would not be sent` : ''}.</p>
    <ul class="plan-targets">
      ${plan.targets
        .slice(0, 10)
        .map(
          (t) =>
            html`<li>
              <code>${t.device_id}</code> ${t.presence}${t.problem ? html` <span class="error">${t.problem.code}: ${t.problem.message}</span>` : ''}
            </li>`,
        )}
      ${plan.targets_listed < s.targets || plan.targets.length > 10 ? html`<li>… and ${s.targets - Math.min(10, plan.targets.length)} more</li>` : null}
    </ul>
    <button type="button" class="danger" disabled=${busy} onClick=${onStart}>Start rollout to ${s.targets} device(s)</button>
  </section>`;
}
