/** Typed errors of provisioning/flash, each with a stable code and the exit status the CLI uses. */

export type FlashErrorCode =
  | 'E_USAGE' // bad flags
  | 'E_BUNDLE' // the bundle is missing, malformed or has loose secret permissions
  | 'E_AGENT' // the built agent tree is missing or not a production build
  | 'E_PRIVILEGE' // the operation needs root
  | 'E_IMAGE' // the image's partition table or file systems are not usable
  | 'E_TOOL' // an external tool is missing or failed
  | 'E_FIRST_BOOT' // the image's first-boot files cannot be extended safely
  | 'E_TARGET'; // the target root is not usable

export class FlashError extends Error {
  override readonly name = 'FlashError';
  constructor(
    readonly code: FlashErrorCode,
    message: string,
    readonly exitCode: number = code === 'E_USAGE' ? 2 : 1,
  ) {
    super(message);
  }
}

export function isFlashError(err: unknown): err is FlashError {
  return err instanceof FlashError;
}
