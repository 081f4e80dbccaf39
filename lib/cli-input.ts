/** Reading a CLI's inputs: a device id flag, a file or standard input, a JSON file; refusals are CodedErrors (exit statuses: INPUT_EXIT_STATUSES in cli.ts). */
import { readFile } from 'node:fs/promises';
import type { Argv } from 'yargs';
import { CodedError, ProtocolError, isValidId } from '../protocol/index.js';

/** A yargs `coerce` for a device id flag: a bad id is bad usage (exit 2), refused before anything is read. */
export function deviceIdFlag(flag: string): (value: unknown) => string {
  return (value: unknown) => {
    if (!isValidId(value)) {
      throw new CodedError('E_USAGE', `${flag} "${String(value)}" is not a device id: 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit`);
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
    if (size > maxBytes) throw new ProtocolError('E_TOO_LARGE', `standard input exceeds ${maxBytes} bytes`);
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
    if (code === 'ENOENT') throw new CodedError('E_NO_FILE', `${what} file ${path} does not exist`);
    if (code === 'EACCES') throw new CodedError('E_NO_FILE', `${what} file ${path} is not readable by this user`);
    if (code === 'EISDIR') throw new CodedError('E_NO_FILE', `${what} ${path} is a directory, not a file`);
    throw new CodedError('E_NO_FILE', `cannot read ${what} file ${path}: ${(err as Error).message}`);
  }
  if (data.length > maxBytes) throw new CodedError('E_TOO_LARGE', `${what} file ${path} exceeds ${maxBytes} bytes`);
  return data;
}

export async function readJsonFile(path: string, what: string, maxBytes = 256 * 1024): Promise<unknown> {
  const text = (await readSmallFile(path, maxBytes, what)).toString('utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new CodedError('E_BAD_JSON', `${what} file ${path} is not valid JSON: ${(err as Error).message}`);
  }
}

/** The `[file]` positional of the inspect commands (a compact JWE; standard input when absent), read with readInput. */
export function withInputFile<T>(y: Argv<T>) {
  return y.positional('file', { type: 'string', describe: 'file holding the compact JWE (default: standard input)' });
}
