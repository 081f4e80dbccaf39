/** Small helpers for the messages of the file checks (key store, state, hooks). */

/** A file mode as four octal digits, e.g. `0644`. */
export function octalMode(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0');
}

/** Quotes a path for a shell command only when needed. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}
