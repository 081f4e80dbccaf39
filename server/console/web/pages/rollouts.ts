/** Rollouts, newest first (GET /rollouts), kept current by the `rollout` events of /events. */
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, errorText } from '../api.js';
import { Badge } from '../components/badge.js';
import { ErrorLine } from '../components/error.js';
import { Progress } from '../components/progress.js';
import { Table, type Column } from '../components/table.js';
import { when } from '../format.js';
import { useLive } from '../live.js';
import { href } from '../router.js';
import type { Role, RolloutView } from '../types.js';

const COLUMNS: Column<RolloutView>[] = [
  { key: 'id', label: 'Rollout', cell: (r) => html`<a href=${href(['rollouts', r.id])}>${r.id}</a>` },
  { key: 'action', label: 'Action', cell: (r) => r.action },
  { key: 'state', label: 'State', cell: (r) => html`<${Badge} text=${r.result ?? r.state} />` },
  { key: 'progress', label: 'Progress', cell: (r) => html`<${Progress} done=${r.progress.done} total=${r.progress.total} />` },
  { key: 'applied', label: 'Applied', cell: (r) => String(r.counts.applied ?? 0) },
  { key: 'created', label: 'Created', cell: (r) => when(r.created_at) },
];

export function RolloutsPage(_: { role: Role }): VNode {
  const [rollouts, setRollouts] = useState<RolloutView[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    api
      .get<{ rollouts: RolloutView[] }>('/rollouts')
      .then((r) => setRollouts(r.rollouts))
      .catch((err: unknown) => setError(errorText(err)));
  }, []);
  useLive(
    {
      rollout: (r) =>
        setRollouts((list) => {
          if (!list) return list;
          const i = list.findIndex((x) => x.id === r.id);
          return i < 0 ? [r, ...list] : list.map((x) => (x.id === r.id ? r : x));
        }),
    },
    [],
  );
  return html`<section aria-labelledby="rollouts-title">
    <h1 id="rollouts-title">Rollouts</h1>
    <p class="muted">Start one from the fleet page: select devices, then “Start rollout…”.</p>
    <${ErrorLine} error=${error} />
    ${rollouts ? html`<${Table} caption="Rollouts" columns=${COLUMNS} rows=${rollouts} rowKey=${(r: RolloutView) => r.id} empty="No rollouts yet." />` : error ? null : html`<p aria-busy="true">Loading…</p>`}
  </section>`;
}
