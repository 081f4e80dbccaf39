/**
 * Locating the system tools the deployment tests drive, and the rule for a
 * missing one: skip the test, unless the CI flag for that group
 * (REQUIRE_SYSTEMD_ANALYZE, REQUIRE_MOSQUITTO, REQUIRE_IMAGE_TOOLS) is set,
 * in which case the test fails.
 */
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { skipBecause } from '../helpers/skip.js';

/** PATH plus the sbin directories a non-login root shell may lack. */
export function toolSearchPath(): string[] {
  const fromEnv = (process.env.PATH ?? '').split(delimiter).filter((p) => p !== '');
  return [...new Set([...fromEnv, '/usr/local/sbin', '/usr/sbin', '/sbin', '/usr/bin', '/bin'])];
}

/** Absolute path of an executable, or undefined. */
export function findTool(name: string): string | undefined {
  for (const dir of toolSearchPath()) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

/** An environment for child processes whose PATH finds the sbin tools too. */
export function toolEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { ...process.env, PATH: toolSearchPath().join(delimiter), LC_ALL: 'C', ...extra };
}

/**
 * Resolves every tool in `names`, or skips the running test (this.skip()) when
 * one is missing, or throws when `requireVar` is set to 1 in the environment.
 */
export function requireTools(ctx: Mocha.Context, requireVar: string, names: readonly string[]): Record<string, string> {
  const found: Record<string, string> = {};
  const missing: string[] = [];
  for (const name of names) {
    const path = findTool(name);
    if (path === undefined) missing.push(name);
    else found[name] = path;
  }
  if (missing.length > 0) {
    if (process.env[requireVar] === '1') {
      throw new Error(`${requireVar}=1 but these tools are missing: ${missing.join(', ')}`);
    }
    skipBecause(
      ctx,
      `missing ${missing.join(', ')} (apt-get install -y systemd fdisk dosfstools mtools e2fsprogs openssl mosquitto; ${requireVar}=1 makes this a failure)`,
    );
  }
  return found;
}

/** True when running as root (uid 0). */
export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}
