/**
 * The agent's durable state: one JSON file, `state.json` in the state
 * directory, replaced atomically (temp, fsync, rename, fsync dir) on every
 * change, so a power cut at any instant leaves the old or the new state.
 *
 * It holds what replay protection and `status` need: provisioned or not,
 * the user, the settings applied by `update`, the last applied `seq`, the
 * recent `jti`s with the status their ack carried (bounded: a redelivered
 * command is re-acked as a duplicate, never applied twice), the key ids, and
 * the markers of multi-step actions (rotation, broker change) in progress.
 */
import { type Stats } from 'node:fs';
import { chmod, lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { CodedError, type AckStatus, type GpioSettings, type ReportingSettings, type SensorSettings } from '../../protocol/index.js';
import { errnoCode, makeDirectories, removeStaleTemps, writeFileAtomic } from '../../lib/durable-file.js';
import { octalMode as octal, shellQuote as sh } from './file-modes.js';
import { PrivateFileError, readPrivateFile } from './private-file.js';

export const STATE_VERSION = 1;
export const STATE_FILE = 'state.json';
/** How many recent commands (jti, status) are kept. */
export const MAX_RECENT = 256;
/** A state file is a few hundred KiB at most (MAX_RECENT records); anything much bigger is refused unread. */
const MAX_STATE_BYTES = 4 * 1024 * 1024;

export interface RecentCommand {
  jti: string;
  seq: number;
  action: string;
  status: AckStatus;
  code: string;
  detail: string;
  /** Seconds since the epoch (device clock). */
  at: number;
}

export interface StoredBroker {
  url: string;
  /** PEM text of the CA pinned by an `update` (instead of the config's broker.ca). */
  ca?: string;
  protocol_version?: 4 | 5;
}

export interface Settings {
  sensor?: SensorSettings;
  reporting?: ReportingSettings;
  gpio?: GpioSettings;
  broker?: StoredBroker;
}

export interface PendingRotation {
  jti: string;
  seq: number;
  old_signing_kid: string;
  old_encryption_kid: string;
  new_signing_kid: string;
  new_encryption_kid: string;
  /** The sealed ack (signed by the old key, carrying the new public keys). */
  ack: string;
}

export interface PendingBroker {
  jti: string;
  seq: number;
  /** Broker settings before the update (null: the config file's). */
  previous: StoredBroker | null;
  next: StoredBroker;
  rollback_timeout_s: number;
  /**
   * The user and settings before the update: a rollback restores all of it,
   * also when it happens after a crash. Absent in records written by older
   * versions (only the broker is then rolled back).
   */
  previous_user_id?: string | null;
  previous_settings?: Settings;
}

/**
 * An accepted `upgrade` (agent/actions/upgrade.ts, agent/upgrade/): saved
 * with the command, cleared when its final ack (failed, or the installer's
 * result) is decided. `phase`: `download` (the agent fetches the artifact),
 * `staged` (upgrade/staged.json written: root's installer takes over),
 * `trial` (the new release runs on trial).
 */
export interface PendingUpgrade {
  jti: string;
  seq: number;
  version: string;
  /** The signed manifest (compact JWS), verified when the command was accepted. */
  manifest: string;
  deadline_s: number;
  phase: 'download' | 'staged' | 'trial';
  /** The version running when the command was accepted. */
  from: string;
  /** https:// URL of the artifact, when the command named a mirror. */
  mirror?: string;
}

export interface KeyIds {
  signing: string | null;
  encryption: string | null;
  previous_encryption: string | null;
}

export interface AgentState {
  version: typeof STATE_VERSION;
  device_id: string;
  provisioned: boolean;
  /** Set by `delete`; cleared when the board enrolls again. */
  decommissioned: boolean;
  user_id: string | null;
  settings: Settings;
  last_seq: number;
  recent: RecentCommand[];
  keys: KeyIds;
  pending_rotation: PendingRotation | null;
  /** The sealed ack of the last applied rotate, re-published verbatim for a redelivery. */
  rotate_ack: { jti: string; token: string } | null;
  pending_broker: PendingBroker | null;
  /** An upgrade in progress (absent in files written before upgrades existed: read as null). */
  pending_upgrade: PendingUpgrade | null;
  last_command: RecentCommand | null;
  enrolled_at: number | null;
  updated_at: number;
  /**
   * The highest run number a start of the agent has taken for its reports
   * (protocol/report.ts: reports are ordered by run, conn, n); each start takes
   * the next and saves it before its first CONNECT. 0 before the first.
   */
  report_run: number;
}

export const STATE_ERROR_CODES = {
  E_STATE: 'the state file cannot be read',
  E_STATE_CORRUPT: 'the state file is damaged (not valid JSON or not an agent state)',
  E_STATE_TYPE: 'the state directory or file is a symlink or not the right file type',
  E_STATE_PERMS: 'the state directory or file has group/other permission bits',
  E_STATE_OWNER: 'the state directory or file is owned by another user',
} as const;

export type StateErrorCode = keyof typeof STATE_ERROR_CODES;

/**
 * A refusal to use the state directory or file. These are for the operator
 * to fix (a restart cannot), so `sensor-agent run` exits with status 2.
 */
export class StateError extends CodedError<StateErrorCode> {
  override readonly name = 'StateError';
  /** The shell command that fixes the problem, when there is one. */
  readonly fix: string | undefined;
  constructor(
    readonly path: string,
    message: string,
    options?: { cause?: unknown; code?: StateErrorCode; fix?: string },
  ) {
    super(options?.code ?? 'E_STATE', options?.fix === undefined ? message : `${message}; fix with: ${options.fix}`, {
      cause: options?.cause,
      details: { path },
    });
    this.fix = options?.fix;
  }
}

/**
 * What to do with a damaged or lost state file. Never "move it away and go
 * on": the replay protection is in it. The agent does not act again on keys
 * whose state is gone (see KeyStore's in-use marker); it enrolls with new keys.
 */
export function stateLossAdvice(path: string): string {
  return `replay protection depends on this file, so the agent will not use this board's current keys without it: re-enroll the board (on the server, provision-server bundle --device <id> --user <user> --out <dir>; copy its enroll.token to the agent's enrollment_token path, mode 0600) and move ${path} away; the agent then makes new keys, and commands sealed to the old ones no longer open`;
}

export function initialState(deviceId: string): AgentState {
  return {
    version: STATE_VERSION,
    device_id: deviceId,
    provisioned: false,
    decommissioned: false,
    user_id: null,
    settings: {},
    last_seq: 0,
    recent: [],
    keys: { signing: null, encryption: null, previous_encryption: null },
    pending_rotation: null,
    rotate_ack: null,
    pending_broker: null,
    pending_upgrade: null,
    last_command: null,
    enrolled_at: null,
    updated_at: 0,
    report_run: 0,
  };
}

/** Reads `state.json` from `dir`; undefined when there is none yet. Throws StateError when it is unreadable. */
export async function readState(dir: string): Promise<AgentState | undefined> {
  const path = join(dir, STATE_FILE);
  let text: string | undefined;
  try {
    text = await readPrivateFile(path, { maxBytes: MAX_STATE_BYTES });
  } catch (err) {
    if (err instanceof PrivateFileError) {
      const code = ({ E_FILE_TYPE: 'E_STATE_TYPE', E_FILE_OWNER: 'E_STATE_OWNER', E_FILE_PERMS: 'E_STATE_PERMS', E_FILE_SIZE: 'E_STATE_CORRUPT' } as const)[
        err.code
      ];
      const message = err.code === 'E_FILE_SIZE' ? `${err.message}: far more than an agent state; ${stateLossAdvice(path)}` : err.message;
      throw new StateError(path, message, { cause: err, code, ...(err.fix !== undefined ? { fix: err.fix } : {}) });
    }
    throw new StateError(path, `cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
  if (text === undefined) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw new StateError(path, `${path} is not valid JSON; it is only ever replaced atomically, so the file system is damaged; ${stateLossAdvice(path)}`, {
      cause,
      code: 'E_STATE_CORRUPT',
    });
  }
  return checkState(value, path);
}

/**
 * The state directory: created 0700 when missing; otherwise a real directory
 * (not a symlink) of the agent's user or root with no group/other permission
 * bits, like the key store: whoever can write there can plant a state file
 * (another broker, seq 0) or replace this one.
 */
async function checkStateDir(dir: string): Promise<void> {
  let st: Stats;
  try {
    st = await lstat(dir);
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw new StateError(dir, `cannot inspect the state directory ${dir}: ${(err as Error).message}`, { cause: err });
    try {
      await makeDirectories(dir, 0o700);
    } catch (cause) {
      throw new StateError(dir, `cannot create the state directory ${dir}: ${(cause as Error).message}`, { cause });
    }
    // Checked like one found: makeDirectories accepts a path that appeared since the lstat above (EEXIST),
    // which can be another user's directory or a symlink planted in that moment.
    try {
      st = await lstat(dir);
    } catch (cause) {
      throw new StateError(dir, `cannot inspect the state directory ${dir}: ${(cause as Error).message}`, { cause });
    }
    if (st.isDirectory() && st.uid === process.getuid?.() && (st.mode & 0o777) !== 0o700 && (st.mode & 0o077) === 0) {
      // Ours, made with mode 0700 less the umask: owner bits back (never group/other bits added).
      await chmod(dir, 0o700).catch(() => undefined);
      st = await lstat(dir);
    }
  }
  if (st.isSymbolicLink()) {
    throw new StateError(dir, `state directory ${dir} is a symbolic link, which could redirect the agent's state; replace it with the real directory`, {
      code: 'E_STATE_TYPE',
      fix: `target=$(readlink -f ${sh(dir)}) && rm ${sh(dir)} && mv "$target" ${sh(dir)}`,
    });
  }
  if (!st.isDirectory()) throw new StateError(dir, `state directory ${dir} is not a directory`, { code: 'E_STATE_TYPE' });
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== 0 && st.uid !== uid) {
    throw new StateError(
      dir,
      `state directory ${dir} is owned by uid ${st.uid}, not by the agent's user (uid ${uid}) or root, so another user could change the agent's state`,
      { code: 'E_STATE_OWNER', fix: `chown ${uid} ${sh(dir)}` },
    );
  }
  if ((st.mode & 0o077) !== 0) {
    throw new StateError(
      dir,
      `state directory ${dir} has mode ${octal(st.mode)}, which lets other users ${(st.mode & 0o022) !== 0 ? 'plant or replace' : 'read'} the agent's state`,
      { code: 'E_STATE_PERMS', fix: `chmod 700 ${sh(dir)}` },
    );
  }
}

export interface StateStoreOptions {
  /** Test hook: simulates a crash between the temp write and the rename of a state write. */
  beforeRename?: (tempPath: string) => void | Promise<void>;
}

/** The state file of one agent; `save` replaces it atomically, then updates the in-memory copy. */
export class StateStore {
  #state: AgentState;
  #found = false;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly dir: string,
    state: AgentState,
    private readonly options: StateStoreOptions,
  ) {
    this.#state = state;
  }

  /** Creates the directory (0700) if needed, removes stale temp files, reads the state (or starts fresh). */
  static async open(dir: string, deviceId: string, options: StateStoreOptions = {}): Promise<StateStore> {
    await checkStateDir(dir);
    await removeStaleTemps(dir);
    const found = await readState(dir);
    const state = found ?? initialState(deviceId);
    if (state.device_id !== deviceId) {
      throw new StateError(
        join(dir, STATE_FILE),
        `${join(dir, STATE_FILE)} belongs to device "${state.device_id}", not "${deviceId}"; use another state_dir or move the file away`,
      );
    }
    const store = new StateStore(dir, state, options);
    store.#found = found !== undefined;
    return store;
  }

  /** True when the state file existed when the store was opened (or has been written since). */
  get found(): boolean {
    return this.#found;
  }

  get path(): string {
    return join(this.dir, STATE_FILE);
  }

  get state(): AgentState {
    return this.#state;
  }

  /** Atomically replaces the state with `next` (updated_at is set here). Serialised. */
  save(next: AgentState): Promise<void> {
    return this.#enqueue(() => next);
  }

  /**
   * Applies `change` to a copy of the state as it is when this write's turn comes (after the
   * writes queued before it, so two updates in flight never undo each other) and saves it.
   */
  update(change: (draft: AgentState) => void): Promise<void> {
    return this.#enqueue(() => {
      const draft = structuredClone(this.#state);
      change(draft);
      return draft;
    });
  }

  #enqueue(make: () => AgentState): Promise<void> {
    const run = this.#queue.then(async () => {
      const next = make();
      const stamped: AgentState = { ...next, recent: [...next.recent], updated_at: Math.floor(Date.now() / 1000) };
      boundRecent(stamped);
      await writeFileAtomic(this.path, `${JSON.stringify(stamped, null, 1)}\n`, { mode: 0o600, beforeRename: this.options.beforeRename });
      this.#state = stamped;
      this.#found = true;
    });
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /** Finds a recent command by jti. */
  recent(jti: string): RecentCommand | undefined {
    return this.#state.recent.find((r) => r.jti === jti);
  }
}

/** Adds a command record to `draft.recent` (bounded) and makes it the last command. */
export function recordCommand(draft: AgentState, rec: RecentCommand): void {
  draft.recent = [...draft.recent.filter((r) => r.jti !== rec.jti), rec];
  draft.last_command = rec;
  if (rec.seq > draft.last_seq) draft.last_seq = rec.seq;
  boundRecent(draft);
}

/**
 * Records an authenticated command the device refused (expired, not
 * provisioned yet, bad params...): the refusal is final, so a repetition of
 * the same command is answered with the same outcome and never applied. It
 * goes into the recent window only: the seq floor stays where the applied
 * commands put it (so a refused command does not make the ones the server
 * sent before it stale), and `last_command` stays the last one acted on.
 */
export function recordRefusal(draft: AgentState, rec: RecentCommand): void {
  draft.recent = [...draft.recent.filter((r) => r.jti !== rec.jti), rec];
  boundRecent(draft);
}

/**
 * Keeps the recent window at MAX_RECENT entries. Every command decided so
 * far is either in the window or at or below the seq floor (`last_seq`):
 * evicting an entry raises the floor to its seq, so a command that falls out
 * of the window is still refused as a replay.
 */
export function boundRecent(draft: AgentState): void {
  const excess = draft.recent.length - MAX_RECENT;
  if (excess <= 0) return;
  for (const r of draft.recent.slice(0, excess)) if (r.seq > draft.last_seq) draft.last_seq = r.seq;
  draft.recent = draft.recent.slice(excess);
}

function checkState(value: unknown, path: string): AgentState {
  const bad = (why: string): StateError =>
    new StateError(path, `${path} is not a valid agent state (${why}); ${stateLossAdvice(path)}`, { code: 'E_STATE_CORRUPT' });
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('not an object');
  const s = value as Partial<AgentState>;
  if (s.version !== STATE_VERSION) throw bad(`version ${String(s.version)}, expected ${STATE_VERSION}`);
  if (typeof s.device_id !== 'string') throw bad('device_id');
  if (typeof s.provisioned !== 'boolean') throw bad('provisioned');
  if (typeof s.last_seq !== 'number' || !Number.isSafeInteger(s.last_seq) || s.last_seq < 0) throw bad('last_seq');
  if (!Array.isArray(s.recent)) throw bad('recent');
  if (typeof s.keys !== 'object' || s.keys === null) throw bad('keys');
  if (s.report_run !== undefined && (typeof s.report_run !== 'number' || !Number.isSafeInteger(s.report_run) || s.report_run < 0)) throw bad('report_run');
  const base = initialState(s.device_id);
  return { ...base, ...s } as AgentState;
}
