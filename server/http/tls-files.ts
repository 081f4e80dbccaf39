/**
 * The HTTPS certificate and key of `serve --http-tls-cert FILE --http-tls-key FILE`:
 * the key file must be a regular file readable by its owner only (mode 0600 or
 * stricter), else E_KEY_PERMS; a missing file is E_NO_FILE; a pair that does not
 * load (not PEM, key not the certificate's) is E_CONFIG. Checked before serve
 * contacts the broker.
 */
import { createSecureContext } from 'node:tls';
import { lstat, readFile } from 'node:fs/promises';
import { CodedError } from '../../protocol/index.js';

export interface HttpTls {
  cert: Buffer;
  key: Buffer;
}

async function regularFile(path: string, what: string): Promise<number> {
  let st;
  try {
    st = await lstat(path);
  } catch {
    throw new CodedError('E_NO_FILE', `${what} ${path} does not exist`);
  }
  if (!st.isFile()) throw new CodedError('E_NO_FILE', `${what} ${path} is not a regular file`);
  return st.mode;
}

export async function readHttpTls(certPath: string, keyPath: string): Promise<HttpTls> {
  const mode = await regularFile(keyPath, 'HTTPS key file');
  if ((mode & 0o077) !== 0) {
    throw new CodedError(
      'E_KEY_PERMS',
      `HTTPS key file ${keyPath} has mode 0${(mode & 0o777).toString(8)}, readable by others; fix with: chmod 600 ${keyPath}`,
    );
  }
  await regularFile(certPath, 'HTTPS certificate file');
  const tls = { cert: await readFile(certPath), key: await readFile(keyPath) };
  try {
    createSecureContext(tls);
  } catch (err) {
    throw new CodedError(
      'E_CONFIG',
      `HTTPS certificate ${certPath} and key ${keyPath} do not load together: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
  return tls;
}
