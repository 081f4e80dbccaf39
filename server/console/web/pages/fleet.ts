/**
 * The fleet: GET /devices paged by the API (50 a page), with search, filters and sort kept in the hash (so a
 * reload or a link shows the same page); select devices to tag them or start a rollout.
 */
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, errorText } from '../api.js';
import { Badge } from '../components/badge.js';
import { ErrorLine, Notice } from '../components/error.js';
import { Pager } from '../components/pager.js';
import { Table, type Column, type SortState } from '../components/table.js';
import { ago } from '../format.js';
import { can } from '../roles.js';
import { href, navigate } from '../router.js';
import type { DevicePage, DeviceView, Role } from '../types.js';
import { RolloutForm } from './rollout-form.js';

export const PAGE_SIZE = 50;
const FILTERS = ['q', 'tag', 'online', 'version', 'flagged', 'sort', 'dir', 'offset'] as const;
type Filters = Partial<Record<(typeof FILTERS)[number], string>>;

function filtersOf(query: URLSearchParams): Filters {
  const f: Filters = {};
  for (const k of FILTERS) {
    const v = query.get(k);
    if (v) f[k] = v;
  }
  return f;
}

const COLUMNS: Column<DeviceView>[] = [
  { key: 'id', label: 'Device', sort: 'id', cell: (d) => html`<a href=${href(['devices', d.id])}>${d.id}</a>` },
  { key: 'user', label: 'User', sort: 'user', cell: (d) => d.user_id ?? '-' },
  { key: 'tags', label: 'Tags', cell: (d) => html`<span class="tags">${d.tags.map((t) => html`<span class="tag">${t}</span>`)}</span>` },
  {
    key: 'seen',
    label: 'Online / last seen',
    sort: 'last_seen',
    cell: (d) => html`<${Badge} text=${d.presence} /> <span class="muted">${ago(d.last_seen_at)}</span>`,
  },
  { key: 'version', label: 'Version', sort: 'version', cell: (d) => d.version ?? '-' },
  {
    key: 'last',
    label: 'Last command',
    sort: 'status',
    cell: (d) =>
      d.last_command ? html`${d.last_command.action} <${Badge} text=${d.last_command.status} />${d.last_command.code ? ` ${d.last_command.code}` : ''}` : '-',
  },
  {
    key: 'flags',
    label: 'Flags',
    cell: (d) =>
      html`${d.security_flag ? html`<span class="badge bad" title=${d.security_flag.event}>flagged</span>` : null}${
        d.reported && !d.reported.kids_match ? html` <span class="badge warn">keys differ</span>` : null
      }${d.state !== 'provisioned' ? html` <span class="badge muted">${d.state}</span>` : null}`,
  },
];

export function FleetPage({ query, role }: { query: URLSearchParams; role: Role }): VNode {
  const filters = filtersOf(query);
  const key = JSON.stringify(filters);
  const [page, setPage] = useState<DevicePage | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [rollout, setRollout] = useState(false);
  const [draft, setDraft] = useState({ q: filters.q ?? '', tag: filters.tag ?? '', version: filters.version ?? '' });
  const [reload, setReload] = useState(0);
  const operator = can(role, 'operator');

  useEffect(() => setDraft({ q: filters.q ?? '', tag: filters.tag ?? '', version: filters.version ?? '' }), [key]);
  useEffect(() => {
    let live = true;
    setError(null);
    api
      .get<DevicePage>('/devices', { ...filters, limit: PAGE_SIZE, offset: filters.offset ?? 0 })
      .then((p) => live && setPage(p))
      .catch((err: unknown) => live && setError(errorText(err)));
    return () => void (live = false);
  }, [key, reload]);

  const go = (change: Filters): void => {
    const next: Filters = { ...filters, offset: undefined, ...change };
    navigate(href(['devices'], next));
  };
  const sort: SortState = { sort: filters.sort ?? 'id', dir: filters.dir === 'desc' ? 'desc' : 'asc' };
  const rows = page?.devices ?? [];
  const allOnPage = rows.length > 0 && rows.every((d) => selected.has(d.id));
  const toggle = (id: string): void => {
    const s = new Set(selected);
    if (s.has(id)) s.delete(id);
    else s.add(id);
    setSelected(s);
  };
  const toggleAll = (): void => {
    const s = new Set(selected);
    for (const d of rows) {
      if (allOnPage) s.delete(d.id);
      else s.add(d.id);
    }
    setSelected(s);
  };

  return html`<section aria-labelledby="fleet-title">
    <h1 id="fleet-title">Fleet</h1>
    <form
      class="filters"
      role="search"
      onSubmit=${(e: Event) => {
        e.preventDefault();
        go({ q: draft.q || undefined, tag: draft.tag || undefined, version: draft.version || undefined });
      }}
    >
      <span
        ><label for="f-q">Search id or user</label
        ><input id="f-q" type="search" value=${draft.q} onInput=${(e: Event) => setDraft({ ...draft, q: (e.target as HTMLInputElement).value })}
      /></span>
      <span
        ><label for="f-tag">Tag</label
        ><input id="f-tag" value=${draft.tag} onInput=${(e: Event) => setDraft({ ...draft, tag: (e.target as HTMLInputElement).value })}
      /></span>
      <span
        ><label for="f-online">Online</label
        ><select id="f-online" value=${filters.online ?? ''} onChange=${(e: Event) => go({ online: (e.target as HTMLSelectElement).value || undefined })}>
          <option value="">any</option>
          <option value="1">online</option>
          <option value="0">not online</option>
        </select></span
      >
      <span
        ><label for="f-version">Version</label
        ><input
          id="f-version"
          value=${draft.version}
          size="8"
          placeholder="e.g. 0.3.0"
          onInput=${(e: Event) => setDraft({ ...draft, version: (e.target as HTMLInputElement).value })}
      /></span>
      <span
        ><label for="f-flagged">Flagged</label
        ><select id="f-flagged" value=${filters.flagged ?? ''} onChange=${(e: Event) => go({ flagged: (e.target as HTMLSelectElement).value || undefined })}>
          <option value="">any</option>
          <option value="1">flagged</option>
          <option value="0">not flagged</option>
        </select></span
      >
      <button type="submit">Search</button>
    </form>
    <${ErrorLine} error=${error} />
    <${Notice} text=${notice} />
    ${
      operator && selected.size > 0
        ? html`<${BulkBar}
            selected=${[...selected]}
            onDone=${(text: string) => {
              setNotice(text);
              setReload(reload + 1);
            }}
            onError=${setError}
            onRollout=${() => setRollout(true)}
            onClear=${() => setSelected(new Set())}
          />`
        : null
    }
    ${
      page
        ? html`<${Table}
              caption="Devices"
              columns=${COLUMNS}
              rows=${rows}
              rowKey=${(d: DeviceView) => d.id}
              sort=${sort}
              onSort=${(s: SortState) => go({ sort: s.sort, dir: s.dir })}
              empty="No device matches."
              lead=${
                operator
                  ? {
                      header: html`<input type="checkbox" aria-label="Select all on this page" checked=${allOnPage} onChange=${toggleAll} />`,
                      cell: (d: DeviceView) =>
                        html`<input type="checkbox" aria-label=${`Select ${d.id}`} checked=${selected.has(d.id)} onChange=${() => toggle(d.id)} />`,
                    }
                  : undefined
              }
            />
            <${Pager}
              offset=${page.offset}
              limit=${page.limit}
              total=${page.total}
              onOffset=${(o: number) => go({ ...filters, offset: o ? String(o) : undefined })}
            />`
        : error
          ? null
          : html`<p aria-busy="true">Loading devices…</p>`
    }
    ${rollout ? html`<${RolloutForm} devices=${[...selected]} onClose=${() => setRollout(false)} />` : null}
  </section>`;
}

function BulkBar({
  selected,
  onDone,
  onError,
  onRollout,
  onClear,
}: {
  selected: string[];
  onDone: (text: string) => void;
  onError: (e: string | null) => void;
  onRollout: () => void;
  onClear: () => void;
}): VNode {
  const [tag, setTag] = useState('');
  const bulk = async (op: 'add' | 'remove'): Promise<void> => {
    onError(null);
    try {
      await api.post('/devices/tags', { devices: selected, [op]: [tag] });
      onDone(`${op === 'add' ? 'Added' : 'Removed'} tag ${tag} ${op === 'add' ? 'to' : 'from'} ${selected.length} device(s).`);
    } catch (err) {
      onError(errorText(err));
    }
  };
  return html`<div class="bulk" role="region" aria-label="Selected devices">
    <span>${selected.length} selected</span>
    <label for="bulk-tag">Tag</label>
    <input id="bulk-tag" value=${tag} onInput=${(e: Event) => setTag((e.target as HTMLInputElement).value)} />
    <button type="button" disabled=${!tag} onClick=${() => bulk('add')}>Add tag</button>
    <button type="button" class="secondary" disabled=${!tag} onClick=${() => bulk('remove')}>Remove tag</button>
    <button type="button" onClick=${onRollout}>Start rollout…</button>
    <button type="button" class="secondary" onClick=${onClear}>Clear selection</button>
  </div>`;
}
