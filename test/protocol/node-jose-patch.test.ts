/**
 * node-jose runs with the project's patch (patches/node-jose+<version>.patch,
 * applied by patch-package in `postinstall`): these fail on an unpatched
 * install. The patch keeps node-jose's behaviour on hostile input; what it
 * changes is checked here: AES-KW's integrity check on bytes, the key cache
 * keyed by content (never confusing two keys), RSA-OAEP-256 in node:crypto.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { constants, createCipheriv, generateKeyPairSync, publicEncrypt, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import jose from 'node-jose';
import { ProtocolError, TRUSTED_CLOCK, openCommand, sealClaims, toPublicJwk } from '../../protocol/index.js';
import { REPO_ROOT } from '../deploy/repo-paths.js';
import { deviceRings, makeParty, type Party } from '../helpers/keys.js';
import { privateKeyOf, rawJwe, rawJws } from '../helpers/raw-jose.js';

interface KeyWrapping {
  wrap(alg: string, data: Buffer): Promise<{ data: Buffer }>;
  unwrap(alg: string, data: Buffer): Promise<Buffer>;
}

function isKeyWrapping(key: object): key is KeyWrapping {
  return 'wrap' in key && typeof key.wrap === 'function' && 'unwrap' in key && typeof key.unwrap === 'function';
}

/** A node-jose key's wrap/unwrap (they exist in node-jose but not in its type definitions). */
function keyWrapping(key: object): KeyWrapping {
  if (!isKeyWrapping(key)) throw new Error('this node-jose key has no wrap/unwrap');
  return key;
}

const require = createRequire(import.meta.url);
const A6 = Buffer.from('A6A6A6A6A6A6A6A6', 'hex');

function wrapWith(kek: Buffer, keyData: Buffer, iv: Buffer): Buffer {
  const c = createCipheriv('id-aes256-wrap', kek, iv);
  return Buffer.concat([c.update(keyData), c.final()]);
}

async function rejects(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection, but it was accepted');
}

describe('node-jose: the project patch is applied and holds', () => {
  it('the installed node-jose is the patched version, with every hunk of the patch in place', () => {
    const patches = readdirSync(join(REPO_ROOT, 'patches')).filter((f) => f.startsWith('node-jose+'));
    expect(patches, 'patches/node-jose+<version>.patch').to.have.length(1);
    const patch = patches[0] as string;
    const installed = (JSON.parse(readFileSync(require.resolve('node-jose/package.json'), 'utf8')) as { version: string }).version;
    expect(patch).to.equal(`node-jose+${installed}.patch`);
    // Reverse-applies cleanly only if every hunk is applied (git apply never writes with --check).
    execFileSync('git', ['apply', '--check', '--reverse', join('patches', patch)], { cwd: REPO_ROOT, stdio: 'pipe' });
  });

  describe('AES-KW (A256KW)', () => {
    const kek = Buffer.from('000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F', 'hex');
    const keyData = Buffer.from('00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F', 'hex');
    // RFC 3394 4.6: 256 bits of key data with a 256-bit KEK.
    const rfcWrapped = Buffer.from('28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21', 'hex');

    it('wraps and unwraps the RFC 3394 test vector', async () => {
      const wrapped = await jose.JWA.encrypt('A256KW', kek, keyData);
      expect(Buffer.from(wrapped.data).equals(rfcWrapped)).to.equal(true);
      expect(Buffer.from(await jose.JWA.decrypt('A256KW', kek, rfcWrapped)).equals(keyData)).to.equal(true);
    });

    it('refuses a key wrapped with the integrity value 80 81 .. 87 (equal to A6.. as UTF-8 text, not as bytes)', async () => {
      // Both decode to eight U+FFFD: the unpatched string comparison accepted it.
      expect(Buffer.from('8081828384858687', 'hex').toString()).to.equal(A6.toString());
      const forged = wrapWith(kek, keyData, Buffer.from('8081828384858687', 'hex'));
      const err = await rejects(jose.JWA.decrypt('A256KW', kek, forged));
      expect(err.message).to.equal('decryption failed');
    });

    it('refuses every single-bit change of a wrapped key, and a wrong KEK', async () => {
      const cek = randomBytes(32);
      const wrapped = wrapWith(kek, cek, A6);
      for (let i = 0; i < wrapped.length; i++) {
        const t = Buffer.from(wrapped);
        t[i] = (t[i] as number) ^ (1 << (i % 8));
        await rejects(jose.JWA.decrypt('A256KW', kek, t));
      }
      await rejects(jose.JWA.decrypt('A256KW', randomBytes(32), wrapped));
      expect(Buffer.from(await jose.JWA.decrypt('A256KW', kek, wrapped)).equals(cek)).to.equal(true);
    });
  });

  describe('through openCommand', () => {
    let server: Party;
    let device: Party;

    before(async () => {
      [server, device] = await Promise.all([makeParty(), makeParty()]);
    });

    const claims = () => {
      const iat = Math.floor(Date.now() / 1000);
      return {
        iss: 'srv',
        aud: 'dev-a',
        iat,
        exp: iat + 60,
        jti: crypto.randomUUID(),
        seq: 1,
        device_id: 'dev-a',
        action: 'update',
        user_id: 'u1',
        params: { sensor: { enabled: true } },
      };
    };

    it('a correctly signed command whose CEK was wrapped with integrity value 80..87 is refused (E_DECRYPT)', async () => {
      const jws = rawJws({ alg: 'ES256', kid: server.signing.kid, typ: 'JWT' }, JSON.stringify(claims()), { kind: 'es256', key: privateKeyOf(server.signing) });
      const opts = { deviceId: 'dev-a', clock: TRUSTED_CLOCK, ...(await deviceRings(device, server)) };
      // Control: the same token with the standard A6.. value opens.
      await openCommand(rawJwe(jws, toPublicJwk(device.encryption)), opts);
      const forged = rawJwe(jws, toPublicJwk(device.encryption), { wrapIv: Buffer.from('8081828384858687', 'hex') });
      const err = await rejects(openCommand(forged, opts));
      expect(err).to.be.instanceOf(ProtocolError);
      expect((err as ProtocolError).code).to.equal('E_DECRYPT');
    });

    it('keys cached by content never stand in for one another: a token signed by another key of the same shape is refused', async () => {
      const other = await makeParty();
      const opts = { deviceId: 'dev-a', clock: TRUSTED_CLOCK, ...(await deviceRings(device, server)) };
      // Warm the caches with both signing keys, and fresh copies of the objects (content, not identity).
      await openCommand(await sealClaims(claims(), { signer: { ...server.signing }, recipient: toPublicJwk(device.encryption) }), opts);
      const forged = await sealClaims(claims(), { signer: { ...other.signing, kid: server.signing.kid }, recipient: toPublicJwk(device.encryption) });
      const err = await rejects(openCommand(forged, opts));
      expect((err as ProtocolError).code).to.equal('E_SIGNATURE');
      // And a device with another key cannot open what was sealed to this one.
      const token = await sealClaims(claims(), { signer: server.signing, recipient: toPublicJwk(device.encryption) });
      const wrongDevice = { ...opts, ...(await deviceRings({ ...other, encryption: { ...other.encryption, kid: device.encryption.kid } }, server)) };
      expect(((await rejects(openCommand(token, wrongDevice))) as ProtocolError).code).to.equal('E_DECRYPT');
    });
  });

  describe('RSA-OAEP-256 in node:crypto', () => {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const cek = randomBytes(32);

    it('unwraps OAEP with SHA-256 made by node:crypto and refuses OAEP with SHA-1 and a changed ciphertext', async () => {
      // JWK.Key#wrap/unwrap exist in node-jose but not in its type definitions.
      const key = keyWrapping(await jose.JWK.asKey(privateKey.export({ format: 'jwk' }), 'json'));
      const ct = publicEncrypt({ key: publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, cek);
      expect(Buffer.from(await key.unwrap('RSA-OAEP-256', ct)).equals(cek)).to.equal(true);
      await rejects(key.unwrap('RSA-OAEP-256', publicEncrypt({ key: publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, cek)));
      const t = Buffer.from(ct);
      t[7] = (t[7] as number) ^ 0x40;
      await rejects(key.unwrap('RSA-OAEP-256', t));
      const wrapped = await key.wrap('RSA-OAEP-256', cek);
      expect(Buffer.from(await key.unwrap('RSA-OAEP-256', wrapped.data)).equals(cek)).to.equal(true);
    });
  });
});
