/**
 * One full garbage collection when the agent goes quiet: after its start-up and after each
 * command, once nothing has happened for IDLE_GC_DELAY_MS. Start-up and a command leave
 * megabytes of garbage in V8's old generation, and an idle agent allocates so little that V8
 * would not collect it for a long time (its memory reducer waits for a low allocation rate it
 * measures only at GCs): the board would carry it for hours. One major GC at idle returns
 * about 2 MB when the compile cache is cold (a first boot), a few hundred KB with it warm (issue 9). Needs `gc`, which Node exposes with --expose-gc (AGENT_NODE_FLAGS, the
 * unit's ExecStart); without it this does nothing.
 */
export const IDLE_GC_DELAY_MS = 1000;

type GcFunction = (options: { type: 'major'; execution: 'sync' }) => unknown;

export class IdleCollector {
  readonly #gc: GcFunction | undefined;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(
    private readonly delayMs = IDLE_GC_DELAY_MS,
    gc: unknown = (globalThis as { gc?: unknown }).gc,
  ) {
    this.#gc = typeof gc === 'function' ? (gc as GcFunction) : undefined;
  }

  /** True when `gc` is exposed (node --expose-gc). */
  get available(): boolean {
    return this.#gc !== undefined;
  }

  /** Something happened: collect once nothing more has for delayMs. */
  poke(): void {
    const gc = this.#gc;
    if (!gc || this.#stopped) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      gc({ type: 'major', execution: 'sync' });
    }, this.delayMs);
    // Never what keeps the process alive.
    this.#timer.unref();
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
