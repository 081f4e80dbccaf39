/**
 * One EventSource on /events shared by the pages that listen (the rollout pages, the audit page): `audit` rows and
 * `rollout` views as the server pushes them. The browser reconnects by itself (with Last-Event-ID); nothing polls.
 */
import { useEffect } from 'preact/hooks';
import type { AuditView, RolloutView } from './types.js';

type Listener = { rollout?: (r: RolloutView) => void; audit?: (a: AuditView) => void };

const listeners = new Set<Listener>();
let source: EventSource | null = null;

function parse<T>(e: Event): T | undefined {
  try {
    return JSON.parse((e as MessageEvent<string>).data) as T;
  } catch {
    return undefined;
  }
}

function open(): void {
  if (source) return;
  source = new EventSource('/events', { withCredentials: true });
  source.addEventListener('rollout', (e) => {
    const r = parse<RolloutView>(e);
    if (r) for (const l of listeners) l.rollout?.(r);
  });
  source.addEventListener('audit', (e) => {
    const a = parse<AuditView>(e);
    if (a) for (const l of listeners) l.audit?.(a);
  });
}

/** Closes the stream (logout). */
export function closeLive(): void {
  source?.close();
  source = null;
}

/** Listens while the component is mounted; the stream stays open for the next page. */
export function useLive(listener: Listener, deps: unknown[]): void {
  useEffect(() => {
    open();
    listeners.add(listener);
    return () => void listeners.delete(listener);
  }, deps);
}
