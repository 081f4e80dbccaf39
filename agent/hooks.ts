/**
 * Optional hook executables: `<hooks_dir>/<action>` (e.g. `update`), run
 * with the validated params as JSON on stdin, killed after the timeout. A
 * missing hook is not an error; a hook that exits non-zero, is killed or
 * cannot run makes the action fail (and its state change roll back).
 * The hook gets a small environment: PATH, SENSOR_AGENT_DEVICE_ID,
 * SENSOR_AGENT_ACTION, SENSOR_AGENT_SEQ. Hooks may run again for a command
 * redelivered after a crash before its state was saved: make them idempotent.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, lstat } from 'node:fs/promises';
import { join } from 'node:path';

export interface HookResult {
  ran: boolean;
  ok: boolean;
  detail: string;
}

export interface HookRun {
  hooksDir: string | null;
  action: string;
  params: unknown;
  timeoutMs: number;
  env: Record<string, string>;
}

const MAX_OUTPUT = 2048;

export async function runHook(run: HookRun): Promise<HookResult> {
  if (run.hooksDir === null) return { ran: false, ok: true, detail: 'no hooks directory' };
  const file = join(run.hooksDir, run.action);
  try {
    const st = await lstat(file);
    if (!st.isFile() && !st.isSymbolicLink()) return { ran: false, ok: false, detail: `hook ${file} is not a file` };
  } catch {
    return { ran: false, ok: true, detail: 'no hook' };
  }
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
    });
    let output = '';
    const collect = (chunk: Buffer): void => {
      if (output.length < MAX_OUTPUT) output += chunk.toString('utf8').slice(0, MAX_OUTPUT - output.length);
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, run.timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ ran: false, ok: false, detail: `hook ${file} could not run: ${err.message}` });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const out = output.trim().replace(/\s+/g, ' ').slice(0, 300);
      if (timedOut) resolve({ ran: true, ok: false, detail: `hook ${run.action} timed out after ${run.timeoutMs / 1000} s` });
      else if (code === 0) resolve({ ran: true, ok: true, detail: `hook ${run.action} succeeded` });
      else resolve({ ran: true, ok: false, detail: `hook ${run.action} failed (${signal ? `signal ${signal}` : `exit ${String(code)}`})${out ? `: ${out}` : ''}` });
    });
    child.stdin.on('error', () => undefined); // a hook that does not read stdin
    child.stdin.end(`${JSON.stringify(run.params)}\n`);
  });
}
