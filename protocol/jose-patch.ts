/**
 * node-jose must run with the project's patch (patches/node-jose+2.2.0.patch, applied by
 * patch-package in `postinstall`): among other things it makes AES-KW compare the RFC 3394
 * integrity value as bytes, in constant time, where node-jose 2.2.0 compares two UTF-8 decodings
 * (any invalid bytes are equal to A6A6... then). An install that skipped the patch (scripts
 * disabled, a tarball without patches/) would seal and open with that code without a word, so the
 * first seal or open checks, once per process, that the patched behaviour is there, in memory: an
 * A256KW unwrap whose integrity value is 80 81 .. 87 (the same text as A6 A6 .. A6 once decoded,
 * not the same bytes) must fail. If it does not, every seal and open is refused (E_JOSE_UNPATCHED).
 */
import { createCipheriv } from 'node:crypto';
import jose from 'node-jose';
import { CodedError } from './errors.js';

export const JOSE_UNPATCHED_MESSAGE =
  'node-jose is installed without the project patch (patches/node-jose+2.2.0.patch): sealing and opening are refused. Apply it with `npx patch-package` in the install directory (npm install runs it as postinstall; do not install with --ignore-scripts), then restart';

/** The installed node-jose is not the patched one. A setup problem: reinstalling with the patch fixes it. */
export class JosePatchError extends CodedError<'E_JOSE_UNPATCHED'> {
  override readonly name = 'JosePatchError';
  constructor(message = JOSE_UNPATCHED_MESSAGE) {
    super('E_JOSE_UNPATCHED', message);
  }
}

let checked: Promise<void> | undefined;

/** Resolves when the node-jose in use has the project's patch; rejects with JosePatchError when not. Checked once per process. */
export function assertJosePatched(): Promise<void> {
  checked ??= probe();
  return checked;
}

async function probe(): Promise<void> {
  const kek = Buffer.alloc(32, 0x4b);
  const keyData = Buffer.alloc(32, 0x11);
  const integrity = Buffer.from('8081828384858687', 'hex');
  const wrapper = createCipheriv('id-aes256-wrap', kek, integrity);
  const forged = Buffer.concat([wrapper.update(keyData), wrapper.final()]);
  try {
    await jose.JWA.decrypt('A256KW', kek, forged);
  } catch {
    return; // refused: the patched integrity check
  }
  throw new JosePatchError();
}
