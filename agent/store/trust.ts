/**
 * Trust anchors (`trust.jwks`): the server's public JWK set pinned at
 * flashing. Signing keys (`use: "sig"`, one or more during a server key
 * rotation) verify commands; the encryption key (`use: "enc"`, exactly one)
 * is what acks and enrollments are encrypted to.
 */
import { readFile } from 'node:fs/promises';
import { CodedError, KeyRing, parseJwkSet, type PublicJwk } from '../../protocol/index.js';

export interface TrustAnchors {
  path: string;
  signing: PublicJwk[];
  encryption: PublicJwk;
  verification: KeyRing;
}

export class TrustError extends CodedError<'E_TRUST'> {
  override readonly name = 'TrustError';
  constructor(
    readonly path: string,
    message: string,
  ) {
    super('E_TRUST', message, { details: { path } });
  }
}

export async function loadTrustAnchors(path: string): Promise<TrustAnchors> {
  let value: unknown;
  try {
    value = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new TrustError(
      path,
      `trust anchors ${path} cannot be read as JSON (${(err as Error).message}); copy the server's trust.jwks there (provision-server bundle writes it)`,
    );
  }
  let signing: PublicJwk[];
  let encryption: PublicJwk[];
  try {
    signing = await parseJwkSet(value, 'sig');
    encryption = await parseJwkSet(value, 'enc');
  } catch (err) {
    throw new TrustError(path, `trust anchors ${path} are not a valid JWK set: ${(err as Error).message}`);
  }
  if (signing.length === 0) throw new TrustError(path, `trust anchors ${path} hold no server signing key (use "sig"); commands could never verify`);
  if (encryption.length !== 1) {
    throw new TrustError(path, `trust anchors ${path} must hold exactly one server encryption key (use "enc"), found ${encryption.length}`);
  }
  return { path, signing, encryption: encryption[0] as PublicJwk, verification: await KeyRing.create(signing) };
}
