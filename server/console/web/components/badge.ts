/** A short status word with a colour class chosen from a fixed list (never from the value itself). */
import { html } from 'htm/preact';
import type { VNode } from 'preact';

const TONES: Record<string, string> = {
  online: 'ok',
  applied: 'ok',
  completed: 'ok',
  running: 'info',
  sent: 'info',
  sending: 'info',
  pending: 'muted',
  paused: 'warn',
  offline: 'muted',
  unknown: 'muted',
  expired: 'warn',
  partial: 'warn',
  rejected: 'bad',
  failed: 'bad',
  rolled_back: 'bad',
  aborted: 'bad',
  cancelled: 'muted',
  void: 'muted',
  valid: 'info',
  used: 'ok',
  revoked: 'muted',
};

export function Badge({ text }: { text: string }): VNode {
  return html`<span class=${`badge ${TONES[text] ?? 'muted'}`}>${text}</span>`;
}
