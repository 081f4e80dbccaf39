/**
 * The one rule for a GPIO pin number, shared by the update params, the
 * agent's config file and its GPIO layer: a BCM GPIO number from 0 to
 * GPIO_PIN_MAX (the Raspberry Pi header exposes 0-27; the chip has up to 58
 * lines). Whether the pin exists on the actual chip is checked when it is opened.
 */
export const GPIO_PIN_MAX = 63;

export function isGpioPin(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= GPIO_PIN_MAX;
}

/** The first pin given twice in `pins` (role order), with the role that had it first; null when every pin is distinct. */
export function firstDuplicatePin<R extends string>(pins: Iterable<readonly [R, number | null | undefined]>): { role: R; other: R; pin: number } | null {
  const owner = new Map<number, R>();
  for (const [role, pin] of pins) {
    if (typeof pin !== 'number') continue;
    const other = owner.get(pin);
    if (other !== undefined) return { role, other, pin };
    owner.set(pin, role);
  }
  return null;
}
