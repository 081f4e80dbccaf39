/**
 * The outcome of the last self-test (the `selftest` action or `sensor-agent
 * selftest`), kept in `selftest.json` in the state directory so a report can
 * carry it across restarts: replaced atomically (temp, fsync, rename, fsync
 * dir) like state.json, mode 0600. A missing file means "none".
 *
 * It is read like state.json (agent/store/private-file.ts): a FIFO, a
 * symlink, a file of another user, one with group/other bits or bigger than a
 * record can be is refused unread, as is one that does not hold a record.
 * A refused record is never trusted: reports carry no self-test, the agent
 * logs why at start and `sensor-agent status` shows it, until the next
 * self-test replaces the file.
 */
import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { CodedError, type ReportSelftest } from '../../protocol/index.js';
import { writeFileAtomic } from '../../lib/durable-file.js';
import { readPrivateFile } from './private-file.js';

export const SELFTEST_FILE = 'selftest.json';
/** A record is about 30 bytes. */
const MAX_SELFTEST_BYTES = 4096;

/** selftest.json is there but cannot be trusted (the cause says why). */
export class SelftestRecordError extends CodedError<'E_SELFTEST_RECORD'> {
  override readonly name = 'SelftestRecordError';
  constructor(
    readonly path: string,
    why: string,
    cause?: unknown,
  ) {
    super(
      'E_SELFTEST_RECORD',
      `the self-test record ${path} is refused: ${why}; no self-test result is reported until \`sensor-agent selftest\` (or the selftest action) records a new one`,
      { cause, details: { path } },
    );
  }
}

/**
 * The last self-test's `{ ok, at }` (at: seconds since the epoch, board clock), or null when none is
 * recorded. Throws SelftestRecordError when the file is there but not usable.
 */
export async function loadSelftestRecord(stateDir: string): Promise<ReportSelftest | null> {
  const path = join(stateDir, SELFTEST_FILE);
  let text: string | undefined;
  try {
    text = await readPrivateFile(path, { maxBytes: MAX_SELFTEST_BYTES });
  } catch (err) {
    throw new SelftestRecordError(path, err instanceof Error ? err.message : String(err), err);
  }
  if (text === undefined) return null;
  let v: { ok?: unknown; at?: unknown } | null;
  try {
    v = JSON.parse(text) as { ok?: unknown; at?: unknown } | null;
  } catch (cause) {
    throw new SelftestRecordError(path, 'it is not valid JSON', cause);
  }
  if (v !== null && typeof v.ok === 'boolean' && typeof v.at === 'number' && Number.isSafeInteger(v.at) && v.at >= 0) return { ok: v.ok, at: v.at };
  throw new SelftestRecordError(path, 'it is not a self-test record ({ "ok": boolean, "at": seconds })');
}

/** As loadSelftestRecord, but a refused record is null (never trusted): for reports, which carry what is known. */
export async function readSelftestRecord(stateDir: string): Promise<ReportSelftest | null> {
  try {
    return await loadSelftestRecord(stateDir);
  } catch {
    return null;
  }
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
