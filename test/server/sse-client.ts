/** A small server-sent events client for tests (node:http): the events as they arrive, waiting for one, the end. */
import { request, type ClientRequest, type IncomingMessage } from 'node:http';

export interface SseEvent {
  id: string | undefined;
  event: string;
  data: string;
}

export class SseClient {
  readonly events: SseEvent[] = [];
  /** Comment lines (`: ping`). */
  readonly comments: string[] = [];
  status = 0;
  headers: IncomingMessage['headers'] = {};
  /** The body when the answer was not a stream (an error). */
  body = '';
  readonly ended: Promise<void>;
  #req: ClientRequest | undefined;
  #waiters: (() => void)[] = [];
  #done = false;

  private constructor(ended: Promise<void>) {
    this.ended = ended;
  }

  /** Opens GET `url` and resolves once the answer's headers arrived. */
  static open(url: string, headers: Record<string, string> = {}): Promise<SseClient> {
    let endedResolve: () => void = () => undefined;
    const client = new SseClient(new Promise<void>((r) => (endedResolve = r)));
    return new Promise((resolve, reject) => {
      const req = request(url, { headers: { accept: 'text/event-stream', ...headers } }, (res) => {
        client.status = res.statusCode ?? 0;
        client.headers = res.headers;
        res.setEncoding('utf8');
        let buffer = '';
        res.on('data', (chunk: string) => {
          if (!String(res.headers['content-type']).startsWith('text/event-stream')) {
            client.body += chunk;
            return;
          }
          buffer += chunk;
          for (let i = buffer.indexOf('\n\n'); i >= 0; i = buffer.indexOf('\n\n')) {
            client.#parse(buffer.slice(0, i));
            buffer = buffer.slice(i + 2);
          }
          client.#wake();
        });
        const finish = (): void => {
          client.#done = true;
          client.#wake();
          endedResolve();
        };
        res.on('end', finish);
        res.on('close', finish);
        res.on('error', finish);
        resolve(client);
      });
      req.on('error', (err) => {
        client.#done = true;
        endedResolve();
        reject(err);
      });
      client.#req = req;
      req.end();
    });
  }

  #parse(block: string): void {
    const e: SseEvent = { id: undefined, event: 'message', data: '' };
    let fields = 0;
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) {
        this.comments.push(line.slice(1).trim());
        continue;
      }
      const colon = line.indexOf(':');
      const name = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (name === 'id') e.id = value;
      else if (name === 'event') e.event = value;
      else if (name === 'data') e.data = e.data ? `${e.data}\n${value}` : value;
      else continue;
      fields++;
    }
    if (fields > 0) this.events.push(e);
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  get done(): boolean {
    return this.#done;
  }

  /** Waits until `check` over the events so far returns something (not undefined/false); rejects after `ms`. */
  async until<T>(check: (events: SseEvent[]) => T | undefined | false, ms = 10_000, what = 'event'): Promise<T> {
    const deadline = Date.now() + ms;
    for (;;) {
      const got = check(this.events);
      if (got !== undefined && got !== false) return got;
      if (this.#done) throw new Error(`the stream ended before ${what} (${this.events.length} events)`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${what} within ${ms} ms (${this.events.length} events: ${JSON.stringify(this.events.slice(-5))})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 200));
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  close(): void {
    this.#req?.destroy();
  }
}
