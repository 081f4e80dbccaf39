/**
 * Status LED patterns. A pattern is a cycle of steps (level, duration); a
 * single step without a duration is a steady level and needs no timer.
 */
export type BoardStatus = 'unprovisioned' | 'enrolling' | 'provisioned' | 'error';

export const BOARD_STATUSES: readonly BoardStatus[] = ['unprovisioned', 'enrolling', 'provisioned', 'error'];

export interface LedStep {
  readonly on: boolean;
  /** How long the step lasts; absent for a steady level. */
  readonly ms?: number;
}

export const LED_PATTERNS: Readonly<Record<BoardStatus, readonly LedStep[]>> = {
  /** Slow blink: 1 s on, 1 s off. */
  unprovisioned: [
    { on: true, ms: 1000 },
    { on: false, ms: 1000 },
  ],
  /** Fast blink: 200 ms on, 200 ms off. */
  enrolling: [
    { on: true, ms: 200 },
    { on: false, ms: 200 },
  ],
  /** Solid on. */
  provisioned: [{ on: true }],
  /** Double blink: two 200 ms flashes, then 1 s dark. */
  error: [
    { on: true, ms: 200 },
    { on: false, ms: 200 },
    { on: true, ms: 200 },
    { on: false, ms: 1000 },
  ],
};
