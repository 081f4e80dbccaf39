/** Reading a CLI's inputs: a device id flag, a file or standard input, a JSON file; refusals are CliErrors. */
import { readFile } from 'node:fs/promises';
import { isValidId } from '../protocol/index.js';
import { CliError } from './cli.js';

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
