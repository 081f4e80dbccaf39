/**
 * What provisioning/build-agent and provisioning/flash share around their
 * main(): typed errors turned into a message and their exit status (2 for
 * usage, with a pointer to --help), anything else into its stack and exit 1,
 * and running main() only when the file is the script node was started with.
 * It lives in flasher/ because the flasher runs from a copy of its own
 * directory alone (test/deploy/run-flash.ts); build-agent imports it from here.
 */
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

/** A CLI's typed error: a stable code and the exit status it maps to. */
export interface CliError extends Error {
  readonly code: string;
  readonly exitCode: number;
}

export interface CliSpec {
  /** Program name that prefixes every message, e.g. 'flash'. */
  readonly prog: string;
  /** How to run it, for the "Run '... --help'" hint, e.g. 'provisioning/flash'. */
  readonly command: string;
  /** Recognizes the CLI's own typed errors. */
  readonly isCliError: (err: unknown) => err is CliError;
}

/** Runs body and returns its exit status, or the one its error maps to (reported on stderr). */
export async function runCliMain(spec: CliSpec, body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (err) {
    if (spec.isCliError(err)) {
      process.stderr.write(`${spec.prog}: ${err.code}: ${err.message}\n`);
      if (err.code === 'E_USAGE') process.stderr.write(`Run '${spec.command} --help' for usage.\n`);
      return err.exitCode;
    }
    process.stderr.write(`${spec.prog}: ${(err as Error).stack ?? String(err)}\n`);
    return 1;
  }
}

/** True when the module at moduleUrl (its import.meta.url) is the script node was started with. */
export function invokedDirectly(moduleUrl: string): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return pathToFileURL(realpathSync(script)).href === moduleUrl;
  } catch {
    return false;
  }
}

/** Runs main with the command line's arguments and sets the exit status, when moduleUrl is the script run. */
export async function runIfInvokedDirectly(moduleUrl: string, main: (argv: readonly string[]) => Promise<number>): Promise<void> {
  if (invokedDirectly(moduleUrl)) process.exitCode = await main(process.argv.slice(2));
}
