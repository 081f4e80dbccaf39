/**
 * A data table: column headers that sort (buttons, with aria-sort), rows built by each column's cell function
 * (their values become text nodes), an empty-state line.
 */
import { html } from 'htm/preact';
import type { ComponentChildren, VNode } from 'preact';

export interface Column<T> {
  key: string;
  label: string;
  cell: (row: T) => ComponentChildren;
  /** The sort key the API knows this column by; absent: not sortable. */
  sort?: string;
  className?: string;
}

export interface SortState {
  sort: string;
  dir: 'asc' | 'desc';
}

export interface TableProps<T> {
  columns: Column<T>[];
  rows: T[];
  rowKey: (row: T) => string;
  caption: string;
  sort?: SortState;
  onSort?: (s: SortState) => void;
  empty?: string;
  /** A leading cell per row (a checkbox) and its header. */
  lead?: { header: ComponentChildren; cell: (row: T) => ComponentChildren };
}

export function Table<T>({ columns, rows, rowKey, caption, sort, onSort, empty, lead }: TableProps<T>): VNode {
  const header = (c: Column<T>): VNode => {
    if (!c.sort || !onSort) return html`<th scope="col" class=${c.className}>${c.label}</th>`;
    const active = sort?.sort === c.sort;
    const dir = active ? sort.dir : undefined;
    const next: SortState = { sort: c.sort, dir: active && dir === 'asc' ? 'desc' : 'asc' };
    return html`<th scope="col" class=${c.className} aria-sort=${dir === 'asc' ? 'ascending' : dir === 'desc' ? 'descending' : 'none'}>
      <button type="button" class="sort" onClick=${() => onSort(next)}>
        ${c.label}<span aria-hidden="true">${dir === 'asc' ? ' ▲' : dir === 'desc' ? ' ▼' : ''}</span>
      </button>
    </th>`;
  };
  return html`<div class="table-wrap">
    <table>
      <caption class="visually-hidden">
        ${caption}
      </caption>
      <thead>
        <tr>
          ${lead ? html`<th scope="col" class="lead">${lead.header}</th>` : null}${columns.map(header)}
        </tr>
      </thead>
      <tbody>
        ${
          rows.length === 0
            ? html`<tr>
                <td class="empty" colspan=${columns.length + (lead ? 1 : 0)}>${empty ?? 'Nothing to show.'}</td>
              </tr>`
            : rows.map(
                (r) =>
                  html`<tr key=${rowKey(r)}>
                    ${lead ? html`<td class="lead">${lead.cell(r)}</td>` : null}${columns.map((c) => html`<td class=${c.className}>${c.cell(r)}</td>`)}
                  </tr>`,
              )
        }
      </tbody>
    </table>
  </div>`;
}
