/**
 * Reset-button hold detection (physical presence): fires once when the button
 * has been held for `holdMs`, then not again until it is released and pressed
 * anew. A button that already reads pressed when watching starts (stuck
 * button, shorted line, held through boot) is ignored until it is released,
 * so a wiring fault cannot reset the board at every start.
 */
import type { TimerHandle, Timers } from './timers.js';

export class ResetHoldDetector {
  private armed = false;
  private holdTimer: TimerHandle | null = null;
  private stopped = false;

  constructor(
    private readonly holdMs: number,
    private readonly timers: Timers,
    private readonly onHeld: () => void,
  ) {}

  /** Starts with the button's current level. Returns false when it was pressed (ignored until released). */
  start(initiallyPressed: boolean): boolean {
    this.armed = !initiallyPressed;
    return this.armed;
  }

  /** Feeds a (debounced) level change. */
  update(pressed: boolean): void {
    if (this.stopped) return;
    if (!pressed) {
      this.cancelHold();
      this.armed = true;
      return;
    }
    if (!this.armed || this.holdTimer !== null) return;
    this.holdTimer = this.timers.setTimeout(() => {
      this.holdTimer = null;
      this.armed = false; // once per press
      this.onHeld();
    }, this.holdMs);
  }

  stop(): void {
    this.stopped = true;
    this.cancelHold();
  }

  private cancelHold(): void {
    this.holdTimer?.cancel();
    this.holdTimer = null;
  }
}
