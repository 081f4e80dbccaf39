/**
 * A set of keys indexed by `kid`, with their node-jose forms prepared once, so
 * that opening a message costs no key import.
 */
import jose from 'node-jose';
import { ProtocolError } from './errors.js';
import { toPublicJwk, type PrivateJwk, type PublicJwk } from './keys.js';

export class KeyRing {
  readonly #keys: Map<string, { jwk: PublicJwk; key: jose.JWK.Key }>;

  private constructor(keys: Map<string, { jwk: PublicJwk; key: jose.JWK.Key }>) {
    this.#keys = keys;
  }

  /** Keys must already be validated (parsePublicJwk / parsePrivateJwk or freshly generated). */
  static async create(keys: readonly (PublicJwk | PrivateJwk)[]): Promise<KeyRing> {
    const map = new Map<string, { jwk: PublicJwk; key: jose.JWK.Key }>();
    for (const jwk of keys) {
      if (map.has(jwk.kid)) continue;
      map.set(jwk.kid, { jwk: toPublicJwk(jwk), key: await asJoseKey(jwk) });
    }
    return new KeyRing(map);
  }

  has(kid: unknown): kid is string {
    return typeof kid === 'string' && this.#keys.has(kid);
  }

  /** The public form of a key in the ring. */
  get(kid: string): PublicJwk | undefined {
    return this.#keys.get(kid)?.jwk;
  }

  get kids(): string[] {
    return [...this.#keys.keys()];
  }

  get size(): number {
    return this.#keys.size;
  }

  /** @internal the prepared node-jose key. */
  joseKey(kid: string): jose.JWK.Key {
    const entry = this.#keys.get(kid);
    if (!entry) throw new ProtocolError('E_KID', `no key with kid ${kid}`);
    return entry.key;
  }
}

const cache = new WeakMap<object, Promise<jose.JWK.Key>>();

/** node-jose key for a JWK object, cached per object. */
export function asJoseKey(jwk: PublicJwk | PrivateJwk): Promise<jose.JWK.Key> {
  let key = cache.get(jwk);
  if (!key) {
    key = jose.JWK.asKey(jwk as unknown as jose.JWK.RawKey, 'json');
    cache.set(jwk, key);
  }
  return key;
}
