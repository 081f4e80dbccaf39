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
  const forged = aesKeyWrap(kek, integrity, keyData);
  try {
    await jose.JWA.decrypt('A256KW', kek, forged);
  } catch {
    return; // refused: the patched integrity check
  }
  throw new JosePatchError();
}

/**
 * RFC 3394 key wrap with a chosen initial value, on AES-256-ECB (present in every OpenSSL build,
 * unlike `id-aes256-wrap`, which some builds lack: the probe must never fail for that reason).
 */
function aesKeyWrap(kek: Buffer, iv: Buffer, key: Buffer): Buffer {
  const n = key.length / 8;
  let a = Buffer.from(iv);
  const r = Array.from({ length: n }, (_, i) => key.subarray(i * 8, i * 8 + 8));
  const aes = createCipheriv('aes-256-ecb', kek, null).setAutoPadding(false);
  for (let j = 0; j <= 5; j++) {
    for (let i = 0; i < n; i++) {
      const b = aes.update(Buffer.concat([a, r[i] as Buffer]));
      const t = BigInt(n * j + i + 1);
      a = Buffer.from(b.subarray(0, 8));
      a.writeBigUInt64BE(a.readBigUInt64BE(0) ^ t);
      r[i] = Buffer.from(b.subarray(8, 16));
    }
  }
  return Buffer.concat([a, ...r]);
}
