/**
 * The command-line edge shared by `sensor-agent` and `provision-server`: the
 * yargs program (commands, --help, --version, usage errors) and how a refusal
 * is reported (`PROGRAM: CODE: message`) with its exit status.
 */
import { createRequire } from 'node:module';
import type yargsModule from 'yargs';
import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { CodedError, isCodedError, isProtocolError } from '../protocol/index.js';
import { packageVersion } from './version.js';

// yargs' CommonJS build: its ESM build's help layout (cliui without wrap-ansi) breaks lines in the middle of words.
const yargs = createRequire(import.meta.url)('yargs') as typeof yargsModule;

/**
 * The `--help` to point a usage error at: the (sub)command being run, e.g.
 * `provision-server keys init --help`, else the program's. `commands` maps each
 * command to its subcommands.
 */
export function helpHint(program: string, args: readonly string[], commands: Readonly<Record<string, readonly string[]>>): string {
  const words = [program];
  const [first, second] = args;
  const subcommands = first === undefined ? undefined : commands[first];
  if (first !== undefined && subcommands !== undefined) {
    words.push(first);
    if (second !== undefined && subcommands.includes(second)) words.push(second);
  }
  return `Run '${words.join(' ')} --help' for usage.`;
}

/** A program's exit status for each refusal code it can end with (any other code: 1). */
export type ExitStatuses = Readonly<Record<string, number>>;

/** Refusals of the shared CLI inputs (lib/cli-input.ts, lib/fs.ts): bad usage, exit 2 in both programs. */
export const INPUT_EXIT_STATUSES: ExitStatuses = { E_USAGE: 2, E_NO_FILE: 2, E_NOT_DIR: 2, E_TOO_LARGE: 2, E_BAD_JSON: 2 };

/**
 * The exit status a refusal ends a program with: a protocol refusal (a message
 * that did not open or verify) is 1, a coded refusal what the program's table
 * says (1 when it says nothing), anything else (a bug) 1.
 */
export function exitStatusOf(err: unknown, statuses: ExitStatuses): number {
  if (isProtocolError(err)) return 1;
  if (isCodedError(err)) return statuses[err.code] ?? 1;
  return 1;
}

/** Prints a refusal on stderr (`CODE: message`, and for E_USAGE the `--help` hint) and sets the exit status from `statuses`. */
export function reportError(program: string, err: unknown, statuses: ExitStatuses, usageHint?: string): void {
  const code = isCodedError(err) ? err.code : 'E_INTERNAL';
  process.stderr.write(`${program}: ${code}: ${err instanceof Error ? err.message : String(err)}\n${code === 'E_USAGE' && usageHint ? `${usageHint}\n` : ''}`);
  process.exitCode = exitStatusOf(err, statuses);
}

export interface CliProgram {
  /** The program name, as in `sensor-agent: E_USAGE: ...`. */
  readonly name: string;
  /** What the program does (the line under `$0 <command> [options]` in --help). */
  readonly description: string;
  /** Adds the commands, in --help order: `(cli) => cli.command(a).command(b)`. */
  readonly commands: (cli: Argv<object>) => Argv<object>;
  /** The exit status for each refusal code (see exitStatusOf). */
  readonly exitStatuses: ExitStatuses;
  /** Each command and its subcommands (for the --help a usage error points at). */
  readonly subcommands: Readonly<Record<string, readonly string[]>>;
  /** What `--version` prints (default: package.json's version). */
  readonly version?: string;
}

/**
 * A word such as `-1h`, `-5m` or `-30` right after a `--long` option is that
 * option's value (a negative duration or number, refused by the option's own
 * check), written `--long=-1h` for yargs: it would otherwise read `-1h` as the
 * short flags `-1` and `-h` (help, exit 0). No option of ours is a digit, so
 * such a word is never meant as flags. Nothing after `--` is touched.
 */
export function joinDashValues(args: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    if (arg === '--') return [...out, ...args.slice(i)];
    const next = args[i + 1];
    if (/^--[^-=][^=]*$/.test(arg) && next !== undefined && /^-[0-9.]/.test(next)) {
      out.push(`${arg}=${next}`);
      i++;
    } else out.push(arg);
  }
  return out;
}

/** Runs a program on process.argv: usage errors exit 2 with the --help to read; a handler's refusal is reported by reportError. */
export async function runCli(program: CliProgram): Promise<void> {
  const args = joinDashValues(hideBin(process.argv));
  const hint = (): string => helpHint(program.name, args, program.subcommands);
  await program
    .commands(yargs(args).scriptName(program.name).usage(`$0 <command> [options]\n\n${program.description}`))
    .demandCommand(1, 'Name a command (see --help).')
    .strict()
    .version(program.version ?? packageVersion())
    .help()
    .alias('h', 'help')
    .wrap(Math.min(100, process.stdout.columns || 100))
    .fail((msg: string | undefined, err: Error | undefined) => {
      // A handler's error is reported once, by the catch below; yargs' own (YError: validation, a flag's coerce) are usage errors.
      if (err && err.name !== 'YError') throw err;
      process.stderr.write(`${program.name}: E_USAGE: ${msg ?? err?.message ?? 'bad usage'}\n${hint()}\n`);
      process.exit(exitStatusOf(new CodedError('E_USAGE', msg ?? 'bad usage'), program.exitStatuses));
    })
    .parseAsync()
    .catch((err: unknown) => reportError(program.name, err, program.exitStatuses, hint()));
}

/** A command's definition: its arguments' type is what its builder declares (yargs' inference), so the handler needs no cast. */
export interface CommandSpec<T> {
  readonly command: string | readonly string[];
  readonly describe: string;
  readonly builder: (y: Argv) => Argv<T>;
  readonly handler: (args: ArgumentsCamelCase<T>) => void | Promise<void>;
}

/** A yargs command module from a CommandSpec (the handler's arguments typed by the builder). */
export function defineCommand<T>(spec: CommandSpec<T>): CommandModule<object, T> {
  return { ...spec, command: typeof spec.command === 'string' ? spec.command : [...spec.command] };
}
