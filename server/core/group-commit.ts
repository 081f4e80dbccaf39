/**
 * Group commit: registry writes asked for during one turn of the event loop
 * (the concurrent sends of a fan-out or of the HTTP API) run as one batch, one
 * transaction, so one commit (one fsync) for the batch instead of one per
 * command. Batches run one at a time, in order: what is submitted while a
 * batch runs waits for the next one. Every caller's promise settles only
 * after its batch committed (or failed): durability is unchanged, each caller
 * still publishes only what is durably recorded.
 */

/** Runs a batch; returns one result per input, an Error for an input that failed alone. Throwing fails the whole batch. */
export type BatchRunner<I, O> = (inputs: I[]) => Promise<(O | Error)[]>;

export const DEFAULT_MAX_BATCH = 256;

export class GroupCommit<I, O> {
  readonly #run: BatchRunner<I, O>;
  readonly #maxBatch: number;
  #pending: { input: I; resolve: (o: O) => void; reject: (e: Error) => void }[] = [];
  #scheduled = false;
  #running = false;

  constructor(run: BatchRunner<I, O>, maxBatch = DEFAULT_MAX_BATCH) {
    this.#run = run;
    this.#maxBatch = Math.max(1, maxBatch);
  }

  submit(input: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.#pending.push({ input, resolve, reject });
      this.#schedule();
    });
  }

  #schedule(): void {
    if (this.#scheduled || this.#running) return;
    this.#scheduled = true;
    setImmediate(() => void this.#flush());
  }

  async #flush(): Promise<void> {
    this.#scheduled = false;
    this.#running = true;
    try {
      await this.#drain();
    } finally {
      this.#running = false;
      if (this.#pending.length > 0) this.#schedule();
    }
  }

  async #drain(): Promise<void> {
    while (this.#pending.length > 0) {
      const batch = this.#pending.splice(0, this.#maxBatch);
      let results: (O | Error)[];
      try {
        results = await this.#run(batch.map((b) => b.input));
        if (results.length !== batch.length) throw new Error(`group commit: ${results.length} results for ${batch.length} inputs`);
      } catch (err) {
        const e = err instanceof Error ? err : new Error(String(err));
        for (const b of batch) b.reject(e);
        continue;
      }
      results.forEach((r, i) => {
        const b = batch[i] as (typeof batch)[number];
        if (r instanceof Error) b.reject(r);
        else b.resolve(r);
      });
    }
  }
}
