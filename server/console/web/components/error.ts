/** An API error (`CODE: message`) or a notice, announced to screen readers. */
import { html } from 'htm/preact';
import type { VNode } from 'preact';

export function ErrorLine({ error }: { error: string | null }): VNode | null {
  return error ? html`<p class="error" role="alert">${error}</p>` : null;
}

export function Notice({ text }: { text: string | null }): VNode | null {
  return text ? html`<p class="notice" role="status">${text}</p>` : null;
}
