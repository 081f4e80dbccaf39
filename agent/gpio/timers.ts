/**
 * The clock the GPIO module runs on. Real timers are unref'd: the LED pattern
 * and the reset-button hold timer never keep the process alive (hundreds of
 * agents may share one process in tests). ManualTimers is a virtual clock for
 * tests and demos: nothing happens until `advance()`.
 */
export interface TimerHandle {
  cancel(): void;
}

export interface Timers {
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
}

export const realTimers: Timers = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref();
    return { cancel: () => clearTimeout(t) };
  },
};

interface ManualEntry {
  at: number;
  order: number;
  fn: () => void;
  cancelled: boolean;
}

export class ManualTimers implements Timers {
  private current: number;
  private order = 0;
  private entries: ManualEntry[] = [];

  constructor(start = 0) {
    this.current = start;
  }

  now(): number {
    return this.current;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const entry: ManualEntry = { at: this.current + Math.max(0, ms), order: this.order++, fn, cancelled: false };
    this.entries.push(entry);
    return {
      cancel: () => {
        entry.cancelled = true;
        this.entries = this.entries.filter((e) => e !== entry);
      },
    };
  }

  /** Timers scheduled and not yet run or cancelled. */
  pending(): number {
    return this.entries.length;
  }

  /** Moves the clock forward, running every timer that falls due, in time order (including ones they schedule). */
  advance(ms: number): void {
    const end = this.current + ms;
    for (;;) {
      let next: ManualEntry | undefined;
      for (const e of this.entries) {
        if (e.at <= end && (next === undefined || e.at < next.at || (e.at === next.at && e.order < next.order))) next = e;
      }
      if (next === undefined) break;
      this.entries = this.entries.filter((e) => e !== next);
      this.current = next.at;
      next.fn();
    }
    this.current = end;
  }
}
