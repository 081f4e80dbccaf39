/**
 * Sealing spread over cores: N worker threads (seal-worker.ts) each seal what
 * they are sent; the main thread keeps the registry, MQTT and the acks. Off by
 * default (`--seal-workers 0`): on the 2-core machine measured (see the
 * benchmark doc) the main thread and mosquitto already use the second core,
 * and the message round trip eats what a worker saves. It pays where sealing
 * is the bottleneck and cores are free.
 */
import { Worker } from 'node:worker_threads';
import { ProtocolError, sealCommand, type CommandClaims, type CommandInput, type ProtocolErrorCode, type SealKeys } from '../../protocol/index.js';

export interface SealRequest {
  id: number;
  input: CommandInput;
  keys: SealKeys;
}

export type SealResponse =
  { id: number; token: string; claims: CommandClaims; error?: undefined } | { id: number; error: { code: ProtocolErrorCode | null; message: string } };

export type Sealed = { token: string; claims: CommandClaims };

/** What CommandSender seals with: in process, or a pool of worker threads. */
export type Seal = (input: CommandInput, keys: SealKeys) => Promise<Sealed>;

export const MAX_SEAL_WORKERS = 64;

interface PoolWorker {
  worker: Worker;
  inFlight: Map<number, { resolve: (s: Sealed) => void; reject: (e: Error) => void }>;
}

export class SealPool {
  readonly #workers: PoolWorker[];
  #nextId = 1;
  #closed = false;

  private constructor(workers: PoolWorker[]) {
    this.#workers = workers;
  }

  /** Starts `size` sealing threads (1-64). */
  static start(size: number): SealPool {
    if (!Number.isInteger(size) || size < 1 || size > MAX_SEAL_WORKERS) throw new RangeError(`seal workers must be 1-${MAX_SEAL_WORKERS}, got ${size}`);
    const workers: PoolWorker[] = [];
    for (let i = 0; i < size; i++) {
      const worker = new Worker(new URL('./seal-worker.js', import.meta.url));
      const w: PoolWorker = { worker, inFlight: new Map() };
      worker.on('message', (res: SealResponse) => {
        const waiter = w.inFlight.get(res.id);
        if (!waiter) return;
        w.inFlight.delete(res.id);
        if (res.error) waiter.reject(res.error.code ? new ProtocolError(res.error.code, res.error.message) : new Error(res.error.message));
        else waiter.resolve({ token: res.token, claims: res.claims });
      });
      const failAll = (err: Error): void => {
        for (const waiter of w.inFlight.values()) waiter.reject(err);
        w.inFlight.clear();
      };
      worker.on('error', failAll);
      worker.on('exit', (code) => failAll(new Error(`seal worker exited (${code})`)));
      worker.unref();
      workers.push(w);
    }
    return new SealPool(workers);
  }

  get size(): number {
    return this.#workers.length;
  }

  /** Seals on the least busy worker. */
  seal: Seal = (input, keys) => {
    if (this.#closed) return Promise.reject(new Error('the seal pool is closed'));
    let w = this.#workers[0] as PoolWorker;
    for (const c of this.#workers) if (c.inFlight.size < w.inFlight.size) w = c;
    const id = this.#nextId++;
    const target = w;
    return new Promise<Sealed>((resolve, reject) => {
      target.inFlight.set(id, { resolve, reject });
      target.worker.postMessage({ id, input, keys } satisfies SealRequest);
    });
  };

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#workers.map((w) => w.worker.terminate()));
  }
}

/** Sealing in this thread. */
export const sealInProcess: Seal = (input, keys) => sealCommand(input, keys);
