/**
 * The agent's side of the upgrade directory (`upgrade.dir`, by default
 * /var/lib/sensor-agent/upgrade: agent-owned, 0700), shared with the root
 * installer (provisioning's upgrade-guard) through these files:
 *
 * - agent writes: `VERSION.part` and `VERSION.index` (the download),
 *   `artifact.tar.gz` + `staged.json` (complete and verified; staged.json
 *   last, atomically), `progress.json` and `healthy` (a release on trial);
 * - installer writes (root, chowned to the agent's user): `trial.json`
 *   (a trial runs) and `result.json` (the upgrade is decided).
 *
 * Everything is opened without following a symlink and checked to be a
 * regular file of the agent's user or root, not writable by group or others,
 * of a bounded size; a file that fails is ignored with a warning, never
 * trusted.
 */
import { constants, type Stats } from 'node:fs';
import { chmod, lstat, open, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { errnoCode, fsyncDirectory, makeDirectories, writeFileAtomic } from '../../lib/durable-file.js';
import { ACK_STATUSES, CodedError, isVersion, type AckStatus } from '../../protocol/index.js';

export const STAGED_FILE = 'staged.json';
export const ARTIFACT_FILE = 'artifact.tar.gz';
export const PROGRESS_FILE = 'progress.json';
export const HEALTHY_FILE = 'healthy';
export const TRIAL_FILE = 'trial.json';
export const RESULT_FILE = 'result.json';
const MAX_HANDOFF_BYTES = 16 * 1024;

export interface UpgradePaths {
  dir: string;
  part: (version: string) => string;
  index: (version: string) => string;
  artifact: string;
  staged: string;
  progress: string;
  healthy: string;
  trial: string;
  result: string;
}

export function upgradePaths(dir: string): UpgradePaths {
  return {
    dir,
    part: (v) => join(dir, `${v}.part`),
    index: (v) => join(dir, `${v}.index`),
    artifact: join(dir, ARTIFACT_FILE),
    staged: join(dir, STAGED_FILE),
    progress: join(dir, PROGRESS_FILE),
    healthy: join(dir, HEALTHY_FILE),
    trial: join(dir, TRIAL_FILE),
    result: join(dir, RESULT_FILE),
  };
}

/** `staged.json`: what the installer is to install (spec: written last, atomically). */
export interface StagedRecord {
  version: string;
  manifest: string;
  deadline_s: number;
  jti: string;
  seq: number;
  from: string;
}

/** `progress.json`: the new release's own view of its trial (written by the agent on trial). */
export interface ProgressRecord {
  version: string;
  started: true;
  connected: boolean;
  selftest: boolean | null;
  reported: boolean;
}

/** `trial.json` (installer): the release `version` runs on trial, switched from `from`. */
export interface TrialRecord {
  version: string;
  from: string;
  jti: string;
  seq: number;
  deadline_s: number;
}

/** `result.json` (installer): the upgrade's outcome, acked by whichever agent runs then. */
export interface ResultRecord {
  status: AckStatus;
  code: string;
  detail: string;
  version: string;
  from: string;
  jti: string;
  seq: number;
}

export class UpgradeFileError extends CodedError<'E_UPGRADE_FILE'> {
  override readonly name = 'UpgradeFileError';
}

/** Creates the upgrade directory (0700) or checks the one there: a real directory of this user or root, no group/other bits. */
export async function ensureUpgradeDir(dir: string): Promise<void> {
  let st: Stats;
  try {
    st = await lstat(dir);
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw err;
    await makeDirectories(dir, 0o700);
    st = await lstat(dir);
    if (st.isDirectory() && st.uid === process.getuid?.()) await chmod(dir, 0o700);
    st = await lstat(dir);
  }
  if (st.isSymbolicLink() || !st.isDirectory())
    throw new UpgradeFileError('E_UPGRADE_FILE', `${dir} is not a real directory (a symbolic link is not followed)`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid && st.uid !== 0)
    throw new UpgradeFileError('E_UPGRADE_FILE', `${dir} is owned by uid ${st.uid}, not the agent's user`);
  if ((st.mode & 0o077) !== 0) throw new UpgradeFileError('E_UPGRADE_FILE', `${dir} has group/other permission bits; fix with: chmod 700 ${dir}`);
}

/** Opens `path` for reading without following a symlink; undefined when absent. Checks a regular file of this user or root, not group/other-writable. */
export async function readSafeFile(path: string, maxBytes: number): Promise<Buffer | undefined> {
  let fh;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') throw new UpgradeFileError('E_UPGRADE_FILE', `${path} is a symbolic link (not followed)`);
    throw err;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new UpgradeFileError('E_UPGRADE_FILE', `${path} is not a regular file`);
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid && st.uid !== 0)
      throw new UpgradeFileError('E_UPGRADE_FILE', `${path} is owned by uid ${st.uid}, not the agent's user or root`);
    if ((st.mode & 0o022) !== 0) throw new UpgradeFileError('E_UPGRADE_FILE', `${path} is writable by group or others`);
    if (st.size > maxBytes) throw new UpgradeFileError('E_UPGRADE_FILE', `${path} is ${st.size} bytes, more than ${maxBytes}`);
    const buf = Buffer.alloc(maxBytes + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0 || n + bytesRead >= buf.length) {
        n += bytesRead;
        break;
      }
      n += bytesRead;
    }
    if (n > maxBytes) throw new UpgradeFileError('E_UPGRADE_FILE', `${path} is more than ${maxBytes} bytes`);
    return buf.subarray(0, n);
  } finally {
    await fh.close();
  }
}

async function readJson(path: string): Promise<Record<string, unknown> | undefined> {
  const buf = await readSafeFile(path, MAX_HANDOFF_BYTES);
  if (buf === undefined) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(buf.toString('utf8'));
  } catch {
    throw new UpgradeFileError('E_UPGRADE_FILE', `${path} is not valid JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new UpgradeFileError('E_UPGRADE_FILE', `${path} is not a JSON object`);
  return v as Record<string, unknown>;
}

const JTI = /^[A-Za-z0-9._~-]{1,128}$/;
const CODE = /^[A-Z][A-Z0-9_]{0,63}$/;

function bad(path: string, why: string): UpgradeFileError {
  return new UpgradeFileError('E_UPGRADE_FILE', `${path}: ${why}`);
}

function seqOf(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

export async function readTrial(path: string): Promise<TrialRecord | undefined> {
  const v = await readJson(path);
  if (v === undefined) return undefined;
  if (!isVersion(v.version) || !isVersion(v.from)) throw bad(path, 'version and from must be versions');
  if (typeof v.jti !== 'string' || !JTI.test(v.jti) || !seqOf(v.seq)) throw bad(path, 'jti and seq must name the upgrade command');
  const deadline = typeof v.deadline_s === 'number' && Number.isFinite(v.deadline_s) ? v.deadline_s : 0;
  return { version: v.version, from: v.from, jti: v.jti, seq: v.seq, deadline_s: deadline };
}

export async function readResult(path: string): Promise<ResultRecord | undefined> {
  const v = await readJson(path);
  if (v === undefined) return undefined;
  if (typeof v.status !== 'string' || !(ACK_STATUSES as readonly string[]).includes(v.status) || v.status === 'rejected') {
    throw bad(path, 'status must be applied, rolled_back or failed');
  }
  if (typeof v.code !== 'string' || !CODE.test(v.code)) throw bad(path, 'code must be an upper-case code');
  if (typeof v.jti !== 'string' || !JTI.test(v.jti) || !seqOf(v.seq)) throw bad(path, 'jti and seq must name the upgrade command');
  const version = isVersion(v.version) ? v.version : '';
  const from = isVersion(v.from) ? v.from : '';
  const detail = typeof v.detail === 'string' ? v.detail.slice(0, 1000) : '';
  return { status: v.status as AckStatus, code: v.code, detail, version, from, jti: v.jti, seq: v.seq };
}

/** Atomic, durable (tmp + fsync + rename + fsync dir), 0600. */
export function writeJsonFile(path: string, value: unknown): Promise<void> {
  return writeFileAtomic(path, `${JSON.stringify(value)}\n`, { mode: 0o600 });
}

/** Removes files (absent ones are fine), then fsyncs the directory once. */
export async function removeFiles(dir: string, paths: readonly string[]): Promise<void> {
  let removed = false;
  for (const p of paths) {
    try {
      await unlink(p);
      removed = true;
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT') throw err;
    }
  }
  if (removed) await fsyncDirectory(dir).catch(() => undefined);
}
