/**
 * A set of keys indexed by `kid`, with their node-jose forms prepared once, so
 * that opening a message costs no key import.
 */
import { createHash } from 'node:crypto';
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

/** Bound on the keys kept by content (a fleet's recipients; the oldest unused one goes first). */
export const MAX_CACHED_JOSE_KEYS = 4096;

const byObject = new WeakMap<object, Promise<jose.JWK.Key>>();
const byContent = new Map<string, Promise<jose.JWK.Key>>();

/** kid and every member, in a canonical order, hashed: the cache holds no key material as its key. */
function contentId(jwk: PublicJwk | PrivateJwk): string {
  const members = Object.entries(jwk)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}

/**
 * node-jose key for a JWK, cached by kid and content (the registry hands a
 * freshly parsed object per seal, so identity alone would never hit), with a
 * fast path for the same object. A key node-jose refuses is not kept.
 */
export function asJoseKey(jwk: PublicJwk | PrivateJwk): Promise<jose.JWK.Key> {
  const same = byObject.get(jwk);
  if (same) return same;
  const id = contentId(jwk);
  let key = byContent.get(id);
  if (key) {
    byContent.delete(id); // most recently used goes last
  } else {
    key = jose.JWK.asKey(jwk, 'json');
    const made = key;
    made.catch(() => {
      if (byContent.get(id) === made) byContent.delete(id);
    });
    while (byContent.size >= MAX_CACHED_JOSE_KEYS) byContent.delete(byContent.keys().next().value as string);
  }
  byContent.set(id, key);
  byObject.set(jwk, key);
  return key;
}
