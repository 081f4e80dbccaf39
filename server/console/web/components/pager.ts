/** Previous / next over an offset-paged list: `51-100 of 1000`. */
import { html } from 'htm/preact';
import type { VNode } from 'preact';

export function Pager({ offset, limit, total, onOffset }: { offset: number; limit: number; total: number; onOffset: (o: number) => void }): VNode {
  const first = total === 0 ? 0 : offset + 1;
  const last = Math.min(offset + limit, total);
  return html`<nav class="pager" aria-label="Pages">
    <button type="button" disabled=${offset === 0} onClick=${() => onOffset(Math.max(0, offset - limit))}>Previous</button>
    <span class="pager-pos" aria-live="polite">${first}-${last} of ${total}</span>
    <button type="button" disabled=${last >= total} onClick=${() => onOffset(offset + limit)}>Next</button>
  </nav>`;
}
