/**
 * Reading a small private file of the agent's state directory (state.json,
 * next-will.json, selftest.json) without trusting what is at its name.
 *
 * The file is opened with O_NOFOLLOW (a symlink is refused, never followed)
 * and O_NONBLOCK (opening a FIFO does not wait for a writer), then checked on
 * the open descriptor (fstat: no race with a rename): a regular file, owned
 * by the agent's user (or root), with no group/other permission bits, and no
 * bigger than the caller's bound (so a planted 64 MB file is not read whole).
 */
import { constants, type Stats } from 'node:fs';
import { open } from 'node:fs/promises';
import { CodedError } from '../../protocol/index.js';
import { errnoCode } from '../../lib/durable-file.js';
import { octalMode as octal, shellQuote as sh } from './file-modes.js';

export const PRIVATE_FILE_ERROR_CODES = {
  E_FILE_TYPE: 'a symbolic link, FIFO, directory or other non-regular file',
  E_FILE_OWNER: "owned by another user than the agent's (or root)",
  E_FILE_PERMS: 'group/other permission bits set',
  E_FILE_SIZE: 'larger than such a file can be',
} as const;

export type PrivateFileErrorCode = keyof typeof PRIVATE_FILE_ERROR_CODES;

/** A private file refused unread: its code says why, `fix` is the shell command that fixes it when there is one. */
export class PrivateFileError extends CodedError<PrivateFileErrorCode> {
  override readonly name = 'PrivateFileError';
  constructor(
    readonly path: string,
    code: PrivateFileErrorCode,
    message: string,
    readonly fix?: string,
    cause?: unknown,
  ) {
    super(code, message, { cause, details: { path } });
  }
}

export interface PrivateFileOptions {
  /** Largest size accepted, bytes. */
  maxBytes: number;
  /**
   * Mode bits refused (default 0o077: the agent's own files are 0600). 0o022 for a file root
   * hands the agent's group to read (release.jwks, 0640): only writes by others are refused.
   */
  refusedModeBits?: number;
}

/**
 * The text of the private file at `path`; undefined when there is none (ENOENT).
 * Throws PrivateFileError when it is there but not usable, or the errno error of the open or read.
 */
export async function readPrivateFile(path: string, options: PrivateFileOptions): Promise<string | undefined> {
  return (await readPrivateBytes(path, options))?.toString('utf8');
}

/** readPrivateFile's bytes, for a binary file (e.g. an upgrade's chunk index). */
export async function readPrivateBytes(path: string, options: PrivateFileOptions): Promise<Buffer | undefined> {
  let fh;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') {
      throw new PrivateFileError(
        path,
        'E_FILE_TYPE',
        `${path} is a symbolic link, which the agent does not follow (it could point at a file another user controls); replace it with the real file`,
        `cp --remove-destination "$(readlink -f ${sh(path)})" ${sh(path)} && chmod 600 ${sh(path)}`,
        err,
      );
    }
    throw err;
  }
  try {
    const st = await fh.stat();
    checkPrivateFile(path, st, options);
    // Read to at most one byte past the bound: a file that grew since the fstat is still not read whole.
    const buf = Buffer.alloc(Math.min(st.size, options.maxBytes) + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n === buf.length) break;
    }
    if (n > options.maxBytes) throw sizeError(path, n, options.maxBytes);
    return buf.subarray(0, n);
  } finally {
    await fh.close();
  }
}

/** The checks of readPrivateFile on an fstat of the open file. */
export function checkPrivateFile(path: string, st: Stats, options: PrivateFileOptions): void {
  if (!st.isFile()) throw new PrivateFileError(path, 'E_FILE_TYPE', `${path} is not a regular file (${fileKind(st)})`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== 0 && st.uid !== uid) {
    throw new PrivateFileError(
      path,
      'E_FILE_OWNER',
      `${path} is owned by uid ${st.uid}, not by the agent's user (uid ${uid}) or root, so another user could have planted it`,
      `chown ${uid} ${sh(path)}`,
    );
  }
  const refused = options.refusedModeBits ?? 0o077;
  if ((st.mode & refused) !== 0) {
    throw new PrivateFileError(
      path,
      'E_FILE_PERMS',
      refused === 0o077
        ? `${path} has mode ${octal(st.mode)}; the agent writes it 0600, so another user could have written it`
        : `${path} has mode ${octal(st.mode)}: writable by group or others, so another user could have written it`,
      `chmod 600 ${sh(path)}`,
    );
  }
  if (st.size > options.maxBytes) throw sizeError(path, st.size, options.maxBytes);
}

function sizeError(path: string, size: number, maxBytes: number): PrivateFileError {
  return new PrivateFileError(path, 'E_FILE_SIZE', `${path} is ${size} bytes or more, more than the ${maxBytes} such a file can be; it was not read`);
}

function fileKind(st: Stats): string {
  if (st.isFIFO()) return 'a FIFO';
  if (st.isDirectory()) return 'a directory';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
  return 'not a regular file';
}
