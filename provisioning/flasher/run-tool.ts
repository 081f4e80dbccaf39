/** Running the external tools flash drives (debugfs, mtools, sfdisk, losetup...), with sbin on PATH. */
import { execFile } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { FlashError } from './errors.js';

const EXTRA_PATH = ['/usr/local/sbin', '/usr/sbin', '/sbin'];

export function toolPath(): string {
  const parts = (process.env.PATH ?? '').split(delimiter).filter((p) => p !== '');
  return [...new Set([...parts, ...EXTRA_PATH])].join(delimiter);
}

/** Absolute path of `name` on PATH (plus sbin), or undefined. */
export function whichTool(name: string): string | undefined {
  for (const dir of toolPath().split(delimiter)) {
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // next
    }
  }
  return undefined;
}

/** Like whichTool, but a missing tool is an E_TOOL error naming the Debian package. */
export function requireTool(name: string, debianPackage: string): string {
  const path = whichTool(name);
  if (path === undefined) throw new FlashError('E_TOOL', `${name} is not installed (Debian package: ${debianPackage})`);
  return path;
}

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a tool and returns its exit code and output; never throws for a non-zero exit. */
export function runTool(
  file: string,
  args: readonly string[],
  options: { env?: Record<string, string>; input?: string; cwd?: string } = {},
): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      [...args],
      {
        env: { ...process.env, PATH: toolPath(), LC_ALL: 'C', ...options.env },
        maxBuffer: 256 * 1024 * 1024,
        encoding: 'utf8',
        ...(options.cwd ? { cwd: options.cwd } : {}),
      },
      (err, stdout, stderr) => {
        if (err && typeof (err as { code?: unknown }).code !== 'number') {
          reject(new FlashError('E_TOOL', `cannot run ${file}: ${err.message}`));
          return;
        }
        resolve({ code: err ? Number((err as { code?: unknown }).code) : 0, stdout, stderr });
      },
    );
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

/** Runs a tool and throws E_TOOL with its stderr unless it exits 0. */
export async function mustRun(
  file: string,
  args: readonly string[],
  what: string,
  options: { env?: Record<string, string>; input?: string } = {},
): Promise<ToolResult> {
  const r = await runTool(file, args, options);
  if (r.code !== 0) throw new FlashError('E_TOOL', `${what} failed (${file} exit ${r.code}): ${(r.stderr || r.stdout).trim()}`);
  return r;
}
