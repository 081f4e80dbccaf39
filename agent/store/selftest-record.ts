/**
 * The outcome of the last self-test (the `selftest` action or `sensor-agent
 * selftest`), kept in `selftest.json` in the state directory so a report can
 * carry it across restarts: replaced atomically (temp, fsync, rename, fsync
 * dir) like state.json, mode 0600. A missing or unreadable file means "none".
 */
import { lstat, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ReportSelftest } from '../../protocol/index.js';
import { writeFileAtomic } from '../../lib/durable-file.js';

export const SELFTEST_FILE = 'selftest.json';

/** The last self-test's `{ ok, at }` (at: seconds since the epoch, board clock), or null when none is recorded. */
export async function readSelftestRecord(stateDir: string): Promise<ReportSelftest | null> {
  let text: string;
  try {
    text = await readFile(join(stateDir, SELFTEST_FILE), 'utf8');
  } catch {
    return null;
  }
  try {
    const v = JSON.parse(text) as { ok?: unknown; at?: unknown };
    if (typeof v.ok === 'boolean' && typeof v.at === 'number' && Number.isSafeInteger(v.at) && v.at >= 0) return { ok: v.ok, at: v.at };
  } catch {
    // damaged: treated as none
  }
  return null;
}

/** Records a self-test outcome durably. Throws DurableFileError (E_DISK_FULL, E_WRITE). */
export async function writeSelftestRecord(stateDir: string, ok: boolean, nowMs: number = Date.now()): Promise<void> {
  const rec: ReportSelftest = { ok, at: Math.floor(nowMs / 1000) };
  await writeFileAtomic(join(stateDir, SELFTEST_FILE), `${JSON.stringify(rec)}\n`, { mode: 0o600 });
}

/**
 * True when `stateDir` exists and belongs to this user: `sensor-agent selftest` run by another user
 * (root) must not leave a file there the agent could not replace.
 */
export async function ownsStateDir(stateDir: string): Promise<boolean> {
  const st = await lstat(stateDir).catch(() => undefined);
  return st !== undefined && st.isDirectory() && typeof process.getuid === 'function' && st.uid === process.getuid();
}
