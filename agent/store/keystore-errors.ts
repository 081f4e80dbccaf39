/**
 * Typed refusals of the agent's key store. Every refusal has a stable code;
 * the message names the file and, where one exists, the exact command that
 * fixes it (also in `fix`). Every `sensor-agent` command exits with status 2 on
 * these (agent/commands/exit-statuses.ts): a set-up problem, which neither a
 * retry nor a restart fixes.
 */
import { CodedError } from '../../protocol/index.js';

export const KEYSTORE_ERROR_CODES = {
  E_KEYSTORE_PERMS: 'key store directory or key file has group/other permission bits',
  E_KEYSTORE_OWNER: 'key store directory or key file owned by another user',
  E_KEYSTORE_TYPE: 'key store path is a symlink, FIFO or other non-regular file',
  E_KEYSTORE_MISSING: 'key store directory or a required key is missing',
  E_KEYSTORE_CORRUPT: 'key file is not a valid private JWK of the expected use',
  E_KEYSTORE_EXISTS: 'keys already exist (pass --force to replace them)',
  E_KEYSTORE_READONLY: 'key is supplied by systemd credentials and cannot be changed by the agent',
  E_KEYSTORE_IO: 'key store file could not be read',
} as const;

export type KeyStoreErrorCode = keyof typeof KEYSTORE_ERROR_CODES;

export class KeyStoreError extends CodedError<KeyStoreErrorCode> {
  override readonly name = 'KeyStoreError';
  /** The file or directory concerned. */
  readonly path: string;
  /** The shell command that fixes the problem, when there is one. */
  readonly fix: string | undefined;

  constructor(code: KeyStoreErrorCode, path: string, message: string, options?: { fix?: string; cause?: unknown }) {
    super(code, options?.fix === undefined ? message : `${message}; fix with: ${options.fix}`, { cause: options?.cause, details: { path } });
    this.path = path;
    this.fix = options?.fix;
  }
}

export function isKeyStoreError(err: unknown): err is KeyStoreError {
  return err instanceof KeyStoreError;
}
