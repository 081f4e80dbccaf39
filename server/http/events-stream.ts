/**
 * GET /events: the console's live feed as server-sent events (text/event-stream). The browser never polls.
 *   - every new audit row:      `id: N` / `event: audit` / `data: <audit view JSON>` (as GET /audit shows it);
 *   - a rollout whose view changed (counts or state, while unfinished, and once more when it finishes, also when
 *     it started and finished between two ticks: the new audit rows name it):
 *                               `event: rollout` / `data: <rollout view JSON>` (as GET /rollouts/{id}), at most once a tick;
 *     a stream that opens gets the unfinished rollouts' current views at once;
 *   - `: ping` every 15 s of silence (proxies and browsers keep the connection).
 * Resume: `Last-Event-ID: N` (the browser's EventSource sends it on reconnect) or `?after=N` sends the rows after N
 * first (in batches); without either the stream starts at the newest row.
 *
 * One registry-reading timer (500 ms) per server, shared by every stream: each tick reads the audit once from
 * the oldest stream's position (audit.lastId, audit.eventsSince), the unfinished rollouts and their counts once,
 * and checks each console session once (operators.peekSession, which does not extend it): a stream whose session
 * ended gets `event: end` and is closed. The timer runs only while a stream is open. At most MAX_EVENT_STREAMS
 * streams (503 E_STREAMS). Streams end when the client goes, when the server closes its connections (serve's
 * close), or when the storage is closed. GET only: it changes nothing.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CodedError } from '../../protocol/index.js';
import type { Logger } from '../../lib/log.js';
import { auditView } from '../audit-filter.js';
import { rolloutView } from '../rollouts/rollout-views.js';
import type { Storage } from '../storage/types.js';
import type { RequestContext } from './auth.js';
import { queryValues } from './route-kit.js';
import { allow, sendJson } from './http-io.js';

export const EVENTS_TICK_MS = 500;
export const EVENTS_PING_MS = 15_000;
export const MAX_EVENT_STREAMS = 100;
/** Audit rows read per tick at most (a stream resuming from far back catches up over several ticks). */
export const EVENTS_BATCH = 500;
/** A client this far behind (bytes queued) is cut off rather than buffered without bound. */
const MAX_QUEUED_BYTES = 4 * 1024 * 1024;

export interface EventHubOptions {
  tickMs?: number;
  pingMs?: number;
  maxStreams?: number;
  log?: Pick<Logger, 'warn'>;
}

interface Stream {
  res: ServerResponse;
  /** The id of the last audit row it was sent (or that it resumed after). */
  cursor: number;
  session: string | undefined;
  lastWrite: number;
}

/** Whether GET /events is asked for (the router's one line). */
export function isEventsRoute(parts: readonly string[]): boolean {
  return parts[0] === 'events' && parts.length === 1;
}

const hubs = new WeakMap<object, EventHub>();

/** The hub of one HTTP API (keyed by its context object: one shared timer per server). */
export function eventHubFor(key: object, storage: Storage, options: EventHubOptions = {}): EventHub {
  let hub = hubs.get(key);
  if (!hub) {
    hub = new EventHub(storage, options);
    hubs.set(key, hub);
  }
  return hub;
}

export class EventHub {
  readonly #storage: Storage;
  readonly #tickMs: number;
  readonly #pingMs: number;
  readonly #max: number;
  readonly #log: Pick<Logger, 'warn'> | undefined;
  readonly #streams = new Set<Stream>();
  #timer: NodeJS.Timeout | undefined;
  #ticking = false;
  /** The last view sent of each unfinished rollout (JSON text), by id. */
  #rollouts = new Map<string, string>();

  constructor(storage: Storage, options: EventHubOptions = {}) {
    this.#storage = storage;
    this.#tickMs = options.tickMs ?? EVENTS_TICK_MS;
    this.#pingMs = options.pingMs ?? EVENTS_PING_MS;
    this.#max = options.maxStreams ?? MAX_EVENT_STREAMS;
    this.#log = options.log;
  }

  /** Open streams. */
  get size(): number {
    return this.#streams.size;
  }

  /** Whether the shared timer runs (only while a stream is open). */
  get running(): boolean {
    return this.#timer !== undefined;
  }

  /** Answers GET /events: checks the request, then holds the response open as a stream. */
  async open(req: IncomingMessage, res: ServerResponse, url: URL, method: string, rc: Pick<RequestContext, 'session'>): Promise<void> {
    allow(method, ['GET']);
    const after = resumePoint(queryValues(url.searchParams, ['after'] as const).after, req.headers['last-event-id']);
    if (this.#streams.size >= this.#max) {
      res.setHeader('Retry-After', '10');
      return sendJson(res, 503, { error: { code: 'E_STREAMS', message: `too many event streams open (at most ${this.#max}); try again later` } });
    }
    const cursor = after ?? (await this.#storage.audit.lastId());
    if (this.#streams.size >= this.#max) {
      res.setHeader('Retry-After', '10');
      return sendJson(res, 503, { error: { code: 'E_STREAMS', message: `too many event streams open (at most ${this.#max}); try again later` } });
    }
    req.socket.setNoDelay(true);
    req.socket.setKeepAlive(true);
    res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-store', 'X-Accel-Buffering': 'no' });
    const stream: Stream = { res, cursor, session: rc.session, lastWrite: Date.now() };
    this.#streams.add(stream);
    res.on('close', () => this.#drop(stream));
    // The browser reconnects after 2 s when the connection drops; the rollouts' current views at once.
    this.#write(stream, 'retry: 2000\n\n');
    for (const view of this.#rollouts.values()) this.#write(stream, `event: rollout\ndata: ${view}\n\n`);
    this.#timer ??= setInterval(() => void this.#tick(), this.#tickMs);
  }

  /** Ends every stream and stops the timer (the server is closing). */
  close(): void {
    for (const s of [...this.#streams]) this.#end(s);
    this.#stop();
  }

  #drop(s: Stream): void {
    this.#streams.delete(s);
    if (this.#streams.size === 0) this.#stop();
  }

  #stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    // Stale once nobody listens: the next stream starts from what the registry says then.
    this.#rollouts = new Map();
  }

  #end(s: Stream, reason?: string): void {
    if (reason !== undefined && !s.res.writableEnded) s.res.write(`event: end\ndata: ${JSON.stringify({ reason })}\n\n`);
    if (!s.res.writableEnded) s.res.end();
    this.#drop(s);
  }

  #write(s: Stream, text: string): void {
    if (s.res.writableEnded || s.res.destroyed) return this.#drop(s);
    if (s.res.writableLength > MAX_QUEUED_BYTES) {
      s.res.destroy();
      return this.#drop(s);
    }
    s.res.write(text);
    s.lastWrite = Date.now();
  }

  async #tick(): Promise<void> {
    if (this.#ticking) return;
    this.#ticking = true;
    try {
      if (!this.#storage.open) return this.close();
      await this.#checkSessions();
      if (this.#streams.size === 0) return;
      const mentioned = await this.#sendAudit();
      await this.#sendRollouts(mentioned);
      const now = Date.now();
      for (const s of this.#streams) if (now - s.lastWrite >= this.#pingMs) this.#write(s, ': ping\n\n');
    } catch (err) {
      // The registry unreachable for a moment: the streams stay, the next tick tries again.
      this.#log?.warn('http.events.tick_failed', { reason: err instanceof Error ? err.message : String(err) });
    } finally {
      this.#ticking = false;
    }
  }

  async #checkSessions(): Promise<void> {
    const sessions = new Set([...this.#streams].flatMap((s) => (s.session === undefined ? [] : [s.session])));
    for (const session of sessions) {
      if (await this.#storage.operators.peekSession(session)) continue;
      for (const s of [...this.#streams]) if (s.session === session) this.#end(s, 'session ended');
    }
  }

  /** Sends the new audit rows; returns the rollouts they name (one that started and ended between two ticks still gets its view). */
  async #sendAudit(): Promise<Set<string>> {
    const mentioned = new Set<string>();
    const last = await this.#storage.audit.lastId();
    const from = Math.min(...[...this.#streams].map((s) => s.cursor));
    if (last <= from) return mentioned;
    const rows = await this.#storage.audit.eventsSince(from, last, '', EVENTS_BATCH);
    if (rows.length === 0) return mentioned;
    for (const r of rows) {
      const id = r.detail.rollout_id ?? r.detail.fanout_id;
      if (typeof id === 'string') mentioned.add(id);
    }
    const texts = rows.map((r) => ({ id: r.id, text: `id: ${r.id}\nevent: audit\ndata: ${JSON.stringify(auditView(r))}\n\n` }));
    const top = (rows[rows.length - 1] as { id: number }).id;
    for (const s of [...this.#streams]) {
      const mine = texts.filter((t) => t.id > s.cursor);
      if (mine.length) this.#write(s, mine.map((t) => t.text).join(''));
      s.cursor = Math.max(s.cursor, top);
    }
    return mentioned;
  }

  async #sendRollouts(mentioned: ReadonlySet<string>): Promise<void> {
    const store = this.#storage.rollouts;
    const changed: string[] = [];
    const seen = new Set<string>();
    for (const r of await store.list({ unfinished: true })) {
      seen.add(r.id);
      const view = JSON.stringify(rolloutView(r, await store.counts(r.id)));
      if (this.#rollouts.get(r.id) !== view) changed.push(view);
      this.#rollouts.set(r.id, view);
    }
    // Finished since the last tick (or started and finished between two, named by the new audit rows): its final view, once.
    for (const id of new Set([...this.#rollouts.keys(), ...mentioned])) {
      if (seen.has(id)) continue;
      const before = this.#rollouts.get(id);
      this.#rollouts.delete(id);
      const r = await store.get(id);
      if (!r) continue;
      const view = JSON.stringify(rolloutView(r, await store.counts(r.id)));
      if (view !== before) changed.push(view);
    }
    if (changed.length === 0) return;
    const text = changed.map((v) => `event: rollout\ndata: ${v}\n\n`).join('');
    for (const s of [...this.#streams]) this.#write(s, text);
  }
}

/** The audit id to resume after: `?after=N`, else the Last-Event-ID header; undefined: from now. */
function resumePoint(after: string | undefined, header: string | string[] | undefined): number | undefined {
  const parse = (v: string, what: string): number => {
    if (!/^\d{1,15}$/.test(v)) throw new CodedError('E_BAD_REQUEST', `${what} must be an audit id (a whole number)`);
    return Number(v);
  };
  if (after !== undefined) return parse(after, 'query parameter after');
  if (typeof header === 'string' && header !== '') return parse(header, 'Last-Event-ID');
  return undefined;
}
