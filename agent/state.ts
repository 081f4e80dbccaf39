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
import { mkdir, readFile, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import type { AckStatus, GpioSettings, ReportingSettings, SensorSettings } from '../protocol/index.js';
import { errnoCode, removeStaleTemps, writeFileAtomic } from './durable-file.js';

export const STATE_VERSION = 1;
export const STATE_FILE = 'state.json';
/** How many recent commands (jti, status) are kept. */
export const MAX_RECENT = 256;

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
  last_command: RecentCommand | null;
  enrolled_at: number | null;
  updated_at: number;
}

export class StateError extends Error {
  override readonly name = 'StateError';
  readonly code = 'E_STATE';
  constructor(
    readonly path: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
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
    last_command: null,
    enrolled_at: null,
    updated_at: 0,
  };
}

/** Reads `state.json` from `dir`; undefined when there is none yet. Throws StateError when it is unreadable. */
export async function readState(dir: string): Promise<AgentState | undefined> {
  const path = join(dir, STATE_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw new StateError(path, `cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw new StateError(path, `${path} is not valid JSON; it is only ever replaced atomically, so the file system is damaged: move it away to start unprovisioned`, { cause });
  }
  return checkState(value, path);
}

export interface StateStoreOptions {
  /** Test hook: simulates a crash between the temp write and the rename of a state write. */
  beforeRename?: (tempPath: string) => void | Promise<void>;
}

/** The state file of one agent; `save` replaces it atomically, then updates the in-memory copy. */
export class StateStore {
  #state: AgentState;
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
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new StateError(dir, `cannot create the state directory ${dir}: ${(err as Error).message}`, { cause: err });
    }
    await removeStaleTemps(dir);
    const state = (await readState(dir)) ?? initialState(deviceId);
    if (state.device_id !== deviceId) {
      throw new StateError(join(dir, STATE_FILE), `${join(dir, STATE_FILE)} belongs to device "${state.device_id}", not "${deviceId}"; use another state_dir or move the file away`);
    }
    return new StateStore(dir, state, options);
  }

  get path(): string {
    return join(this.dir, STATE_FILE);
  }

  get state(): AgentState {
    return this.#state;
  }

  /** Atomically replaces the state with `next` (updated_at is set here). Serialised. */
  save(next: AgentState): Promise<void> {
    const run = this.#queue.then(async () => {
      const stamped: AgentState = { ...next, recent: [...next.recent], updated_at: Math.floor(Date.now() / 1000) };
      boundRecent(stamped);
      await writeFileAtomic(this.path, `${JSON.stringify(stamped, null, 1)}\n`, { mode: 0o600, beforeRename: this.options.beforeRename });
      this.#state = stamped;
    });
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /** Applies `change` to a copy of the current state and saves it. */
  update(change: (draft: AgentState) => void): Promise<void> {
    const draft = structuredClone(this.#state);
    change(draft);
    return this.save(draft);
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

/** Makes sure the state directory is 0700 (it holds nothing secret, but the user id and settings are private). */
export async function tightenStateDir(dir: string): Promise<void> {
  await chmod(dir, 0o700).catch(() => undefined);
}

function checkState(value: unknown, path: string): AgentState {
  const bad = (why: string): StateError => new StateError(path, `${path} is not a valid agent state (${why}); move it away to start unprovisioned`);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('not an object');
  const s = value as Partial<AgentState>;
  if (s.version !== STATE_VERSION) throw bad(`version ${String(s.version)}, expected ${STATE_VERSION}`);
  if (typeof s.device_id !== 'string') throw bad('device_id');
  if (typeof s.provisioned !== 'boolean') throw bad('provisioned');
  if (typeof s.last_seq !== 'number' || !Number.isSafeInteger(s.last_seq) || s.last_seq < 0) throw bad('last_seq');
  if (!Array.isArray(s.recent)) throw bad('recent');
  if (typeof s.keys !== 'object' || s.keys === null) throw bad('keys');
  const base = initialState(s.device_id);
  return { ...base, ...s } as AgentState;
}
