/** A progress bar (a <progress> element, so its value is announced) with `done/total` beside it. */
import { html } from 'htm/preact';
import type { VNode } from 'preact';

export function Progress({ done, total, label }: { done: number; total: number; label?: string }): VNode {
  return html`<span class="progress">
    <progress max=${Math.max(total, 1)} value=${total === 0 ? 1 : done} aria-label=${label ?? 'Progress'}></progress>
    <span class="progress-text">${done}/${total}</span>
  </span>`;
}
