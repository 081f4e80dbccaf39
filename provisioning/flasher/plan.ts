/**
 * An install plan: what flash writes onto a board's root file system, as
 * paths (absolute on the board), modes and owner classes, independent of
 * how it gets there (a mounted root, debugfs into an image).
 */
import { FlashError } from './errors.js';

/** Who owns an entry: root:root, the agent's user and group, or root with the agent's group. */
export type OwnerClass = 'root' | 'agent' | 'root:agent';

export type FileSource = { readonly path: string } | { readonly content: string | Buffer };

/** A directory created 0755 root:root only if missing; an existing one is left exactly as it is. */
export interface ParentDirEntry {
  readonly kind: 'parent';
  readonly path: string;
}

/** A directory flash owns: created if missing, its mode and owner always set. */
export interface DirEntry {
  readonly kind: 'dir';
  readonly path: string;
  readonly mode: number;
  readonly owner: OwnerClass;
}

export interface FileEntry {
  readonly kind: 'file';
  readonly path: string;
  readonly mode: number;
  readonly owner: OwnerClass;
  readonly source: FileSource;
  /** A private key or token: must never be readable by group or others. */
  readonly secret: boolean;
}

export interface SymlinkEntry {
  readonly kind: 'symlink';
  readonly path: string;
  readonly target: string;
}

export type PlanEntry = ParentDirEntry | DirEntry | FileEntry | SymlinkEntry;

export interface InstallPlan {
  /** Trees removed entirely before anything is written (a re-flash starts clean). */
  readonly replace: readonly string[];
  /** In order: every entry's parent comes before it. */
  readonly entries: readonly PlanEntry[];
}

/** Numeric owner of the agent's user and group on the target. */
export interface AgentIds {
  uid: number;
  gid: number;
}

/**
 * uid/gid for an owner class. Without the agent's ids (its user does not
 * exist on the target yet) everything is root's: the first-boot hand-over
 * gives the agent its files later. Modes never change, so a staged secret
 * is root 0600 until then.
 */
export function resolveOwner(owner: OwnerClass, ids: AgentIds | undefined): AgentIds {
  if (ids === undefined || owner === 'root') return { uid: 0, gid: 0 };
  if (owner === 'agent') return ids;
  return { uid: 0, gid: ids.gid };
}

const SAFE_PATH = /^\/(?:[^/\0"\\\n]+\/)*[^/\0"\\\n]+$/;

/** Refuses plans that would expose a secret or that name unusual paths (quotes, backslashes, newlines, ..). */
export function checkPlan(plan: InstallPlan): void {
  const seen = new Set<string>(['/']);
  for (const e of plan.entries) {
    if (!SAFE_PATH.test(e.path) || e.path.split('/').some((c) => c === '.' || c === '..')) {
      throw new FlashError(
        'E_TARGET',
        `refusing the path ${JSON.stringify(e.path)}: flash handles plain absolute paths without quotes, backslashes or dot components`,
      );
    }
    const parent = e.path.slice(0, e.path.lastIndexOf('/')) || '/';
    if (!seen.has(parent)) throw new FlashError('E_TARGET', `internal: ${e.path} is planned before its directory ${parent}`);
    if (e.kind === 'file' && e.secret && (e.mode & 0o077) !== 0) {
      throw new FlashError('E_TARGET', `internal: secret ${e.path} planned with mode ${e.mode.toString(8)}`);
    }
    if (e.kind === 'dir' || e.kind === 'parent') seen.add(e.path);
  }
}

export function octal(mode: number): string {
  return `0${(mode & 0o7777).toString(8)}`;
}
