/** Small helpers shared by the agent's CLI commands: reading inputs and reporting refusals. */
import { readFile } from 'node:fs/promises';
import { isProtocolError, isValidId } from '../protocol/index.js';

/** A refusal the CLI reports as `sensor-agent: CODE: message` with a chosen exit status. */
export class CliError extends Error {
  override readonly name = 'CliError';
  constructor(
    readonly code: string,
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** A yargs `coerce` for a device id flag: a bad id is bad usage (exit 2), refused before anything is read. */
export function deviceIdFlag(flag: string): (value: unknown) => string {
  return (value: unknown) => {
    if (!isValidId(value)) {
      throw new CliError('E_USAGE', `${flag} "${String(value)}" is not a device id: 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit`, 2);
    }
    return value;
  };
}

/** Reads a whole file or standard input (path undefined or '-'), refusing more than `maxBytes`. */
export async function readInput(path: string | undefined, maxBytes: number): Promise<Buffer> {
  if (path !== undefined && path !== '-') return readSmallFile(path, maxBytes, 'input');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    const buf = chunk as Buffer;
    size += buf.length;
    if (size > maxBytes) throw new CliError('E_TOO_LARGE', `standard input exceeds ${maxBytes} bytes`);
    chunks.push(buf);
  }
  return Buffer.concat(chunks);
}

export async function readSmallFile(path: string, maxBytes: number, what: string): Promise<Buffer> {
  let data: Buffer;
  try {
    data = await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new CliError('E_NO_FILE', `${what} file ${path} does not exist`, 2);
    if (code === 'EACCES') throw new CliError('E_NO_FILE', `${what} file ${path} is not readable by this user`, 2);
    if (code === 'EISDIR') throw new CliError('E_NO_FILE', `${what} ${path} is a directory, not a file`, 2);
    throw new CliError('E_NO_FILE', `cannot read ${what} file ${path}: ${(err as Error).message}`, 2);
  }
  if (data.length > maxBytes) throw new CliError('E_TOO_LARGE', `${what} file ${path} exceeds ${maxBytes} bytes`, 2);
  return data;
}

export async function readJsonFile(path: string, what: string, maxBytes = 256 * 1024): Promise<unknown> {
  const text = (await readSmallFile(path, maxBytes, what)).toString('utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new CliError('E_BAD_JSON', `${what} file ${path} is not valid JSON: ${(err as Error).message}`, 2);
  }
}

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

/** Prints a refusal on stderr (`CODE: message`, and for E_USAGE the `--help` hint) and sets the exit status. */
export function reportError(program: string, err: unknown, usageHint?: string): void {
  const { code, exitCode } = describe(err);
  process.stderr.write(`${program}: ${code}: ${err instanceof Error ? err.message : String(err)}\n${code === 'E_USAGE' && usageHint ? `${usageHint}\n` : ''}`);
  process.exitCode = exitCode;
}

function describe(err: unknown): { code: string; exitCode: number } {
  if (err instanceof CliError) return { code: err.code, exitCode: err.exitCode };
  if (isProtocolError(err)) return { code: err.code, exitCode: 1 };
  const coded = err as { code?: unknown; exitCode?: unknown } | null;
  if (err instanceof Error && typeof coded?.code === 'string' && /^E_[A-Z_]+$/.test(coded.code)) {
    return { code: coded.code, exitCode: typeof coded.exitCode === 'number' ? coded.exitCode : 1 };
  }
  return { code: 'E_INTERNAL', exitCode: 1 };
}
