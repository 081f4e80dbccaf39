/** The audit log (GET /audit) with its filters in the hash; new rows arrive live from /events when unfiltered. */
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, errorText } from '../api.js';
import { ErrorLine } from '../components/error.js';
import { Table, type Column } from '../components/table.js';
import { json, when } from '../format.js';
import { useLive } from '../live.js';
import { href, navigate } from '../router.js';
import type { AuditView } from '../types.js';

const FILTERS = ['device', 'rollout', 'action', 'since', 'until'] as const;
type Filters = Partial<Record<(typeof FILTERS)[number], string>>;

const COLUMNS: Column<AuditView>[] = [
  { key: 'id', label: '#', cell: (a) => String(a.id) },
  { key: 'at', label: 'At', cell: (a) => when(a.at) },
  { key: 'event', label: 'Event', cell: (a) => a.event },
  { key: 'device', label: 'Device', cell: (a) => (a.device_id ? html`<a href=${href(['devices', a.device_id])}>${a.device_id}</a>` : '-') },
  { key: 'by', label: 'By', cell: (a) => a.by ?? (typeof a.detail.by === 'string' ? a.detail.by : '-') },
  {
    key: 'detail',
    label: 'Detail',
    className: 'detail',
    cell: (a) =>
      html`<code
        >${Object.entries(a.detail)
          .filter(([k]) => k !== 'by')
          .map(([k, v]) => `${k}=${typeof v === 'string' ? v : json(v)}`)
          .join(' ')}</code
      >`,
  },
];

export function AuditPage({ query }: { query: URLSearchParams }): VNode {
  const filters: Filters = {};
  for (const k of FILTERS) {
    const v = query.get(k);
    if (v) filters[k] = v;
  }
  const key = JSON.stringify(filters);
  const [rows, setRows] = useState<AuditView[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [draft, setDraft] = useState<Filters>(filters);

  useEffect(() => {
    setError(null);
    api
      .get<{ audit: AuditView[] }>('/audit', { ...filters, limit: 200 })
      .then((a) => setRows(a.audit.slice().reverse()))
      .catch((err: unknown) => setError(errorText(err)));
  }, [key]);
  useLive(
    {
      audit: (a) => {
        if (Object.keys(filters).length === 0) setRows((r) => (r && !r.some((x) => x.id === a.id) ? [a, ...r].slice(0, 500) : r));
      },
    },
    [key],
  );

  const set = (k: keyof Filters) => (e: Event) => setDraft({ ...draft, [k]: (e.target as HTMLInputElement).value || undefined });
  return html`<section aria-labelledby="audit-title">
    <h1 id="audit-title">Audit log</h1>
    <form
      class="filters"
      onSubmit=${(e: Event) => {
        e.preventDefault();
        navigate(href(['audit'], draft));
      }}
    >
      ${FILTERS.map(
        (k) =>
          html`<span
            ><label for=${`a-${k}`}>${k}</label
            ><input id=${`a-${k}`} value=${draft[k] ?? ''} placeholder=${k === 'since' || k === 'until' ? '2026-01-01 or 1h' : ''} onInput=${set(k)}
          /></span>`,
      )}
      <button type="submit">Filter</button>
    </form>
    <${ErrorLine} error=${error} />
    ${rows ? html`<${Table} caption="Audit rows, newest first" columns=${COLUMNS} rows=${rows} rowKey=${(a: AuditView) => String(a.id)} empty="No audit rows match." />` : error ? null : html`<p aria-busy="true">Loading…</p>`}
  </section>`;
}
