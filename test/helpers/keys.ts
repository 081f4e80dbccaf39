/** Fresh key sets for tests: a server and devices, as the real CLIs make them. */
import { KeyRing, generateEncryptionKey, generateSigningKey, toPublicJwk, type PrivateJwk } from '../../protocol/index.js';

export interface Party {
  signing: PrivateJwk;
  encryption: PrivateJwk;
}

export async function makeParty(options: { rsa?: boolean } = {}): Promise<Party> {
  const [signing, encryption] = await Promise.all([generateSigningKey(), generateEncryptionKey(options.rsa ? { type: 'rsa', modulusLength: 2048 } : {})]);
  return { signing, encryption };
}

/** Rings as a device holds them: own decryption keys, the server's pinned signing keys. */
export async function deviceRings(device: Party, server: Party): Promise<{ decryption: KeyRing; verification: KeyRing }> {
  return {
    decryption: await KeyRing.create([device.encryption]),
    verification: await KeyRing.create([toPublicJwk(server.signing)]),
  };
}
