/**
 * The release key: a P-256 signing key (ES256, `use: "sig"`) that signs agent
 * release manifests, and nothing else. It is not serve's command signing key:
 * serve's key is online on every server machine and signs per command; a
 * release runs code on every board (installed by a root helper), so its key
 * signs once per version and may live offline, on the build machine. A leaked
 * command key cannot push code; a leaked release key cannot send commands.
 *
 *   DATA/keys/release.jwk   the private key (0600), unless kept elsewhere (--out)
 *   DATA/release.jwks       its public JWK set (0644): what `bundle` gives boards to pin
 */
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { CodedError, generateSigningKey, parseJwkSet, toJwkSet, toPublicJwk, type JwkSet, type PrivateJwk, type PublicJwk } from '../../protocol/index.js';
import { writeFileAtomic } from '../../lib/durable-file.js';
import { ensurePrivateDir, exists } from '../../lib/fs.js';
import { readPrivateKeyFile } from './server-keys.js';

export const RELEASE_KEY_FILE = 'release.jwk';
export const RELEASE_JWKS_FILE = 'release.jwks';

export function releaseKeyPath(dataDir: string): string {
  return join(resolve(dataDir), 'keys', RELEASE_KEY_FILE);
}

export function releaseJwksPath(dataDir: string): string {
  return join(resolve(dataDir), RELEASE_JWKS_FILE);
}

/**
 * Makes a release key: the private key at `out` (default DATA/keys/release.jwk,
 * 0600 in a 0700 directory) and its public set at DATA/release.jwks. Refuses
 * to replace either without `force` (boards flashed with the old release.jwks
 * refuse releases signed by the new key until they are re-flashed).
 */
export async function generateReleaseKey(
  dataDir: string,
  options: { out?: string; force?: boolean } = {},
): Promise<{ key: string; jwks: string; kid: string }> {
  const key = options.out !== undefined ? resolve(options.out) : releaseKeyPath(dataDir);
  const jwks = releaseJwksPath(dataDir);
  if (!options.force) {
    for (const p of [key, jwks]) {
      if (await exists(p))
        throw new CodedError(
          'E_KEYS_EXIST',
          `${p} already exists; pass --force to replace the release key (boards flashed with the old release.jwks then refuse new releases until re-flashed)`,
        );
    }
  }
  await ensurePrivateDir(dirname(key));
  const signing = await generateSigningKey();
  await writeFileAtomic(key, `${JSON.stringify(signing)}\n`, { mode: 0o600 });
  await writeReleaseJwks(dataDir, toJwkSet([toPublicJwk(signing)]));
  return { key, jwks, kid: signing.kid };
}

export async function writeReleaseJwks(dataDir: string, set: JwkSet): Promise<void> {
  await writeFileAtomic(releaseJwksPath(dataDir), `${JSON.stringify(set, null, 2)}\n`, { mode: 0o644 });
}

/** The private release key at `path` (default DATA/keys/release.jwk): a regular file, not readable by others. */
export function loadReleaseKey(dataDir: string, path?: string): Promise<PrivateJwk> {
  const file = path !== undefined ? resolve(path) : releaseKeyPath(dataDir);
  return readPrivateKeyFile(
    file,
    'sig',
    'release key',
    () =>
      new CodedError(
        'E_NO_RELEASE_KEY',
        path !== undefined
          ? `release key ${file} does not exist`
          : `no release key in ${file}; make one with: provision-server release keygen --data ${dataDir} (or sign with --key FILE)`,
      ),
  );
}

/** The public release keys (DATA/release.jwks); undefined when there is none (an older data directory). */
export async function readReleaseJwks(dataDir: string): Promise<PublicJwk[] | undefined> {
  const file = releaseJwksPath(dataDir);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CodedError('E_CONFIG', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text) as unknown;
  } catch {
    throw new CodedError('E_CONFIG', `${file} is not valid JSON`);
  }
  return parseJwkSet(json, 'sig');
}
