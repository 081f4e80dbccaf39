/**
 * Optional hook executables: `<hooks_dir>/<action>` (e.g. `update`), run
 * with the validated params as JSON on stdin, killed after the timeout. A
 * missing hook is not an error; a hook that exits non-zero, is killed or
 * cannot run makes the action fail (and its state change roll back).
 * The hook gets a small environment: PATH, SENSOR_AGENT_DEVICE_ID,
 * SENSOR_AGENT_ACTION, SENSOR_AGENT_SEQ. Hooks may run again for a command
 * redelivered after a crash before its state was saved: make them idempotent.
 *
 * A hook runs as the agent's user, who can read the private keys, so it is
 * checked like the key store before it runs (lstat, nothing followed): the
 * hooks directory is a real directory and the hook a regular file (no
 * symlink), both owned by root or the agent's user and not writable by group
 * or others. A hook that fails a check does not run; the action fails with
 * E_HOOK_UNSAFE and a message naming the fix.
 *
 * Containment: the hook leads its own process group. At the timeout the
 * whole group is killed (SIGKILL), and when the hook itself exits the rest
 * of its group (background children) is killed too. The hook is judged on
 * its own exit status; its output pipes are read until the group is gone,
 * for at most a short grace, never for as long as a stray holder keeps them
 * open. (A child that leaves the group with setsid escapes this; systemd's
 * KillMode=control-group stops it with the service.)
 */
import { spawn } from 'node:child_process';
import { constants, type Stats } from 'node:fs';
import { access, lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { errnoCode } from '../../lib/durable-file.js';
import { octalMode as octal } from '../store/file-modes.js';

export interface HookResult {
  ran: boolean;
  ok: boolean;
  detail: string;
  /** The failure code when not the generic E_HOOK (E_HOOK_UNSAFE: the hook failed the permission checks). */
  code?: string;
}

export interface HookRun {
  hooksDir: string | null;
  action: string;
  params: unknown;
  timeoutMs: number;
  env: Record<string, string>;
  /** The uid that may own hooks besides root; default `process.getuid()`. */
  expectedUid?: number;
}

const MAX_OUTPUT = 2048;
/** How long the output pipes are read after the hook's group was killed. */
const PIPE_GRACE_MS = 500;

export async function runHook(run: HookRun): Promise<HookResult> {
  if (run.hooksDir === null) return { ran: false, ok: true, detail: 'no hooks directory' };
  const file = join(run.hooksDir, run.action);
  const uid = run.expectedUid ?? process.getuid?.();
  const fileStats = await lstatOrUndefined(file);
  if (fileStats === undefined) return { ran: false, ok: true, detail: 'no hook' };
  const unsafe = checkHook(run.hooksDir, await lstatOrUndefined(run.hooksDir), file, fileStats, uid);
  if (unsafe !== undefined) return { ran: false, ok: false, code: 'E_HOOK_UNSAFE', detail: unsafe };
  try {
    await access(file, constants.X_OK);
  } catch {
    return { ran: false, ok: false, detail: `hook ${file} is not executable (chmod +x it, or remove it)` };
  }
  return new Promise<HookResult>((resolve) => {
    const child = spawn(file, [], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...run.env },
      cwd: run.hooksDir ?? undefined,
      detached: true, // its own process group, killed as a whole
    });
    let output = '';
    const collect = (chunk: Buffer): void => {
      if (output.length < MAX_OUTPUT) output += chunk.toString('utf8').slice(0, MAX_OUTPUT - output.length);
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    const killGroup = (): void => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // the group is gone already
      }
    };
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup();
    }, run.timeoutMs);
    let settled = false;
    const finish = (result: HookResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(result);
    };
    child.on('error', (err) => finish({ ran: false, ok: false, detail: `hook ${file} could not run: ${err.message}` }));
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      // The hook is done: whatever it left behind in its group goes too, and the pipes are read briefly.
      killGroup();
      const judge = (): void => {
        child.stdout.destroy();
        child.stderr.destroy();
        const out = output.trim().replace(/\s+/g, ' ').slice(0, 300);
        if (timedOut) finish({ ran: true, ok: false, detail: `hook ${run.action} timed out after ${run.timeoutMs / 1000} s` });
        else if (code === 0) finish({ ran: true, ok: true, detail: `hook ${run.action} succeeded` });
        else
          finish({
            ran: true,
            ok: false,
            detail: `hook ${run.action} failed (${signal ? `signal ${signal}` : `exit ${String(code)}`})${out ? `: ${out}` : ''}`,
          });
      };
      const grace = setTimeout(judge, PIPE_GRACE_MS);
      let open = 2;
      const closed = (): void => {
        open -= 1;
        if (open === 0) {
          clearTimeout(grace);
          judge();
        }
      };
      for (const s of [child.stdout, child.stderr]) {
        if (s.closed || s.destroyed) closed();
        else s.once('close', closed);
      }
    });
    child.stdin.on('error', () => undefined); // a hook that does not read stdin
    child.stdin.end(`${JSON.stringify(run.params)}\n`);
  });
}

/** The key store's rules for a hook and its directory; a message with the fix, or undefined when safe. */
function checkHook(dir: string, dirStats: Stats | undefined, file: string, st: Stats, uid: number | undefined): string | undefined {
  const ownerOk = (o: number): boolean => uid === undefined || o === 0 || o === uid;
  if (dirStats === undefined || dirStats.isSymbolicLink() || !dirStats.isDirectory()) {
    return `hooks directory ${dir} is not a real directory (a symbolic link could point the agent at files another user controls); replace it with the real directory`;
  }
  if (!ownerOk(dirStats.uid)) return `hooks directory ${dir} is owned by uid ${dirStats.uid}, not root or the agent's user; fix with: chown root ${dir}`;
  if ((dirStats.mode & 0o022) !== 0)
    return `hooks directory ${dir} has mode ${octal(dirStats.mode)}, which lets other users add or replace hooks; fix with: chmod go-w ${dir}`;
  if (st.isSymbolicLink())
    return `hook ${file} is a symbolic link, which could run a program outside the checked hooks directory; replace it with the real file`;
  if (!st.isFile()) return `hook ${file} is not a regular file`;
  if (!ownerOk(st.uid)) return `hook ${file} is owned by uid ${st.uid}, not root or the agent's user; fix with: chown root ${file}`;
  if ((st.mode & 0o022) !== 0)
    return `hook ${file} has mode ${octal(st.mode)}, which lets other users change what runs as the agent; fix with: chmod go-w ${file}`;
  return undefined;
}

async function lstatOrUndefined(path: string): Promise<Stats | undefined> {
  try {
    return await lstat(path);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return undefined;
    throw err;
  }
}
