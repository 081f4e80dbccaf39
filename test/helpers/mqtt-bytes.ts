/** MQTT wire bytes for tests that hand-build packets. */

/** A packet's Remaining Length, variable-length encoded (MQTT 3.1.1 §2.2.3): 7 bits a byte, high bit = more. */
export function remainingLength(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return out;
}
