/**
 * Strings from the registry (user ids, device-reported codes, file names) in
 * human output: control characters would reach the operator's terminal raw (an
 * ESC sequence can rewrite the screen, retitle the window or hide a line), so
 * they are shown escaped. JSON output stays exact (JSON.stringify escapes C0).
 */

// C0 controls, DEL, C1 controls, line/paragraph separators and the bidi
// embedding/override/isolate controls (which reorder what follows them).
// eslint-disable-next-line no-control-regex -- the C0/C1 controls are what this strips
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/gu;

/** `s` with every control character replaced by a visible `\xNN` or `\u{NNNN}` escape. */
export function printable(s: string): string {
  return s.replace(UNPRINTABLE, (c) => {
    const code = c.codePointAt(0) ?? 0;
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u{${code.toString(16)}}`;
  });
}

/** Aligned columns; control characters in cells are escaped. */
export function table(cells: string[][]): string {
  const rows = cells.map((r) => r.map(printable));
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ')).join('\n') + '\n';
}
