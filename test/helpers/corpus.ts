/**
 * The hostile corpus: hundreds of messages an attacker (or a broken server)
 * could put on a device's command topic, each a named case with the refusal
 * codes `openCommand` may give it and whether the refusal is authenticated
 * (signature verified, claims readable: the agent sends a `rejected` ack) or
 * not (logged and dropped, never acked).
 *
 * Used by the protocol-level test (test/adversarial/corpus.test.ts) and by the
 * broker-level test that publishes the corpus to a running agent.
 */
import { randomUUID } from 'node:crypto';
import { deflateRawSync } from 'node:zlib';
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  sealClaims,
  sealCommand,
  toPublicJwk,
  type PrivateJwk,
  type ProtocolErrorCode,
  type PublicJwk,
} from '../../protocol/index.js';
import { attackerKey, b64json, b64u, privateKeyOf, rawJwe, rawJws } from './raw-jose.js';

export interface HostileCase {
  /** Unique, `class/detail`, so a failure says which. */
  name: string;
  /** The class of attack (the part of `name` before the first '/'). */
  cls: string;
  payload: Buffer;
  /** Codes openCommand may refuse it with. */
  codes: readonly ProtocolErrorCode[];
  /**
   * True when the refusal comes after the signature verified and the claims
   * object was read: `err.refused` is set. False: `err.refused === undefined`
   * (refused before or at the signature, or the signed payload is not a claims
   * object), and the message must never be acknowledged.
   */
  refused: boolean;
  /**
   * `refused` and the jti is usable as an ack's `ref`: the agent answers with
   * a `rejected` ack whose `ref` is `jti` and whose code is one of `codes`.
   */
  acked: boolean;
  /** The jti inside the message, when it has one (to match acks, or to prove none was sent). */
  jti?: string;
  /** Published on this device's command topic instead of the target's. */
  topicDeviceId?: string;
  /** Only refused when the receiver's clock is trusted (exp/iat checks). */
  needsTrustedClock?: boolean;
}

export interface CorpusContext {
  serverId: string;
  deviceId: string;
  /** Another device's id (for wrong aud / device_id / topic). */
  otherDeviceId: string;
  /** The server's signing key, pinned on the device. */
  serverSigning: PrivateJwk;
  /** The device's own signing key (a signer that is not pinned for commands). */
  deviceSigning: PublicJwk | PrivateJwk;
  /** The device's encryption key (public is enough: anyone can encrypt to it). */
  deviceEncryption: PublicJwk;
  /** The last `seq` the device applied; authenticated cases use lastSeq + 1. */
  lastSeq: number;
  /** A jti the device has already applied (for the reused-jti case). */
  seenJti: string;
}

const PRE_AUTH_OUTER: readonly ProtocolErrorCode[] = ['E_MALFORMED', 'E_ALG', 'E_ZIP', 'E_KID', 'E_DECRYPT', 'E_TOO_LARGE'];
const PRE_AUTH_INNER: readonly ProtocolErrorCode[] = ['E_MALFORMED', 'E_ALG', 'E_SIGNATURE'];

/** Evenly spread positions in [0, n), at most `max` of them. */
function positions(n: number, max: number): number[] {
  if (n <= max) return Array.from({ length: n }, (_, i) => i);
  return Array.from({ length: max }, (_, i) => Math.floor((i * (n - 1)) / (max - 1)));
}

function flipChar(s: string, i: number, mask: number): string {
  return s.slice(0, i) + String.fromCharCode(s.charCodeAt(i) ^ mask) + s.slice(i + 1);
}

/** Nested JSON `{"a":{"a":...}}` of the given depth around `inner`. */
function nestedJson(depth: number, inner = '1'): string {
  return `${'{"a":'.repeat(depth)}${inner}${'}'.repeat(depth)}`;
}

export async function buildHostileCorpus(ctx: CorpusContext): Promise<HostileCase[]> {
  const cases: HostileCase[] = [];
  const names = new Set<string>();
  const add = (c: Omit<HostileCase, 'cls'>): void => {
    if (names.has(c.name)) throw new Error(`corpus: duplicate case name ${c.name}`);
    names.add(c.name);
    cases.push({ ...c, cls: c.name.split('/')[0] ?? c.name });
  };
  const pre = (name: string, payload: Buffer | string, codes: readonly ProtocolErrorCode[], jti?: string): void =>
    add({ name, payload: Buffer.isBuffer(payload) ? payload : Buffer.from(payload, 'latin1'), codes, refused: false, acked: false, ...(jti ? { jti } : {}) });

  const recipient = toPublicJwk(ctx.deviceEncryption);
  const serverKey = privateKeyOf(ctx.serverSigning);
  const fresh = ctx.lastSeq + 1;
  const now = Math.floor(Date.now() / 1000);
  const claims = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
    iss: ctx.serverId,
    aud: ctx.deviceId,
    iat: now,
    exp: now + 300,
    jti: randomUUID(),
    seq: fresh,
    device_id: ctx.deviceId,
    action: 'update',
    user_id: 'adversary',
    params: { sensor: { name: 'pwned' } },
    ...over,
  });
  /** A JWS signed by the pinned server key over raw claims text, in a valid JWE. */
  const serverSigned = (payload: string): string =>
    rawJwe(rawJws({ alg: 'ES256', kid: ctx.serverSigning.kid, typ: 'JWT' }, payload, { kind: 'es256', key: serverKey }), recipient);

  // A valid command (never published itself): the base of flips and truncations.
  const validJti = randomUUID();
  const { token: valid } = await sealCommand(
    { serverId: ctx.serverId, deviceId: ctx.deviceId, action: 'update', userId: 'adversary', params: { sensor: { name: 'pwned' } }, seq: fresh, jti: validJti },
    { signer: ctx.serverSigning, recipient },
  );
  const segs = valid.split('.');
  const segNames = ['header', 'encrypted_key', 'iv', 'ciphertext', 'tag'];

  // --- size and encoding -------------------------------------------------
  pre('empty/zero-bytes', Buffer.alloc(0), ['E_MALFORMED']);
  pre('empty/whitespace', '   \n', ['E_MALFORMED']);
  pre('empty/four-dots', '....', ['E_MALFORMED']);
  pre('huge/cap-plus-one', Buffer.alloc(DEFAULT_MAX_MESSAGE_BYTES + 1, 0x41), ['E_TOO_LARGE']);
  pre('huge/valid-shape-over-cap', `${segs[0]}.${segs[1]}.${segs[2]}.${'A'.repeat(DEFAULT_MAX_MESSAGE_BYTES)}.${segs[4]}`, ['E_TOO_LARGE']);
  pre('huge/10MB', Buffer.alloc(10 * 1024 * 1024, 0x41), ['E_TOO_LARGE']);
  pre('huge/10MB-of-dots', Buffer.alloc(10 * 1024 * 1024, 0x2e), ['E_TOO_LARGE']);
  pre('non-utf8/random-bytes', Buffer.from(Array.from({ length: 512 }, (_, i) => (i * 167 + 13) & 0xff)), ['E_MALFORMED']);
  pre('non-utf8/ff-fe', Buffer.from([0xff, 0xfe, 0xfd, 0x00, 0x80]), ['E_MALFORMED']);
  pre('non-utf8/bom-prefixed-token', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(valid)]), ['E_MALFORMED']);
  pre('non-utf8/latin1-in-token', Buffer.from(`${valid.slice(0, 40)}\u00e9${valid.slice(41)}`, 'latin1'), ['E_MALFORMED']);
  pre('non-utf8/nul-in-token', Buffer.from(`${valid.slice(0, 40)}\u0000${valid.slice(41)}`, 'latin1'), ['E_MALFORMED']);
  pre('non-utf8/header-bytes', `${b64u(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]))}.${segs.slice(1).join('.')}`, ['E_MALFORMED']);
  pre('non-utf8/utf16-token', Buffer.from(valid, 'utf16le'), ['E_MALFORMED', 'E_TOO_LARGE']);
  pre('plaintext/seed-delete', '{"device_id":"dev","action":"delete","user_id":"1"}', ['E_MALFORMED'], undefined);
  pre('plaintext/seed-request', JSON.stringify(claims({ action: 'request', params: {} })), ['E_MALFORMED']);
  pre('plaintext/bare-jws', rawJws({ alg: 'ES256', kid: ctx.serverSigning.kid }, JSON.stringify(claims()), { kind: 'es256', key: serverKey }), ['E_MALFORMED']);

  // --- shape ------------------------------------------------------------
  for (const n of [1, 2, 3, 4, 6, 7]) {
    pre(`shape/${n}-segments`, Array.from({ length: n }, (_, i) => segs[i % 5]).join('.'), ['E_MALFORMED']);
  }
  for (let i = 0; i < 5; i++) {
    if (i === 1) continue; // an empty encrypted key is a legal shape (dir); covered by alg checks
    pre(`shape/empty-${segNames[i]}`, segs.map((s, j) => (j === i ? '' : s)).join('.'), ['E_MALFORMED']);
  }
  pre('shape/trailing-dot', `${valid}.`, ['E_MALFORMED']);
  pre('shape/json-serialization', JSON.stringify({ protected: segs[0], encrypted_key: segs[1], iv: segs[2], ciphertext: segs[3], tag: segs[4] }), [
    'E_MALFORMED',
  ]);

  // --- base64url and JSON of the header --------------------------------
  const hdr = segs[0] ?? '';
  const rest = segs.slice(1).join('.');
  pre('base64url/plus-slash', `${hdr.replace(/-/g, '+').replace(/_/g, '/')}${hdr.includes('-') || hdr.includes('_') ? '' : '+'}.${rest}`, ['E_MALFORMED']);
  pre('base64url/padding', `${hdr}==.${rest}`, ['E_MALFORMED']);
  pre('base64url/space', `${hdr.slice(0, 10)} ${hdr.slice(10)}.${rest}`, ['E_MALFORMED']);
  pre('base64url/non-canonical-tail', `${hdr.slice(0, -1)}${hdr.endsWith('A') ? 'B' : 'A'}.${rest}`, ['E_MALFORMED', 'E_DECRYPT']);
  pre('base64url/length-mod-4-is-1', `${hdr}A.${rest}`, ['E_MALFORMED']);
  pre('base64url/ciphertext-padding', `${segs.slice(0, 3).join('.')}.${segs[3]}=.${segs[4]}`, ['E_MALFORMED']);
  pre('header-json/not-json', `${b64u('{not json')}.${rest}`, ['E_MALFORMED']);
  pre('header-json/truncated-json', `${b64u('{"alg":"ECDH-ES+A256KW","enc":')}.${rest}`, ['E_MALFORMED']);
  pre('header-json/array', `${b64json(['ECDH-ES+A256KW'])}.${rest}`, ['E_MALFORMED']);
  pre('header-json/string', `${b64json('ECDH-ES+A256KW')}.${rest}`, ['E_MALFORMED']);
  pre('header-json/number', `${b64json(42)}.${rest}`, ['E_MALFORMED']);
  pre('header-json/null', `${b64json(null)}.${rest}`, ['E_MALFORMED']);
  pre('header-json/empty-object', `${b64json({})}.${rest}`, ['E_ALG']);
  pre('header-json/over-4KiB', `${b64json({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: recipient.kid, cty: 'JWT', pad: 'x'.repeat(5000) })}.${rest}`, [
    'E_MALFORMED',
  ]);
  pre('header-json/deeply-nested', `${b64u(`{"alg":"ECDH-ES+A256KW","enc":"A256GCM","kid":"${recipient.kid}","cty":"JWT","x":${nestedJson(600)}}`)}.${rest}`, [
    'E_MALFORMED',
    'E_DECRYPT',
  ]);
  pre('header-json/proto-pollution', `${b64u(`{"__proto__":{"alg":"ECDH-ES+A256KW","enc":"A256GCM"},"kid":"${recipient.kid}","cty":"JWT"}`)}.${rest}`, [
    'E_ALG',
    'E_MALFORMED',
  ]);

  // --- JWE algorithms ----------------------------------------------------
  const forged = (h: Record<string, unknown>): string => `${b64json(h)}.${'A'.repeat(43)}.${'A'.repeat(16)}.${'A'.repeat(40)}.${'A'.repeat(22)}`;
  const kid = recipient.kid;
  pre('alg-none/jwe', forged({ alg: 'none', enc: 'A256GCM', kid, cty: 'JWT' }), ['E_ALG']);
  pre('alg-none/jwe-no-enc', forged({ alg: 'none', kid }), ['E_ALG']);
  pre('alg-none/jwe-empty-parts', `${b64json({ alg: 'none', kid, cty: 'JWT' })}..${'A'.repeat(16)}.${b64u(JSON.stringify(claims()))}.${'A'.repeat(22)}`, [
    'E_ALG',
  ]);
  pre('rsa1_5/jwe', forged({ alg: 'RSA1_5', enc: 'A256GCM', kid, cty: 'JWT' }), ['E_ALG']);
  pre('rsa-oaep-sha1/jwe', forged({ alg: 'RSA-OAEP', enc: 'A256GCM', kid, cty: 'JWT' }), ['E_ALG']);
  for (const alg of ['PBES2-HS256+A128KW', 'PBES2-HS384+A192KW', 'PBES2-HS512+A256KW']) {
    pre(`pbes2/${alg}-p2c-1e9`, forged({ alg, enc: 'A256GCM', kid, cty: 'JWT', p2c: 1_000_000_000, p2s: 'AAAAAAAAAAAAAAAAAAAAAA' }), ['E_ALG']);
  }
  pre('pbes2/p2c-max-safe-int', forged({ alg: 'PBES2-HS512+A256KW', enc: 'A256GCM', kid, cty: 'JWT', p2c: Number.MAX_SAFE_INTEGER, p2s: 'AAAA' }), ['E_ALG']);
  pre('dir/jwe', forged({ alg: 'dir', enc: 'A256GCM', kid, cty: 'JWT' }), ['E_ALG']);
  pre('dir/empty-key', `${b64json({ alg: 'dir', enc: 'A256GCM', kid, cty: 'JWT' })}..${'A'.repeat(16)}.${'A'.repeat(40)}.${'A'.repeat(22)}`, ['E_ALG']);
  for (const alg of ['A256KW', 'A128KW', 'A256GCMKW', 'ECDH-ES', 'ECDH-ES+A128KW', 'ECDH-ES+A192KW', 'RSA-OAEP-384', 'HS256', 'ES256', '']) {
    pre(`alg-other/${alg || 'empty-string'}`, forged({ alg, enc: 'A256GCM', kid, cty: 'JWT' }), ['E_ALG']);
  }
  for (const alg of [null, 42, ['ECDH-ES+A256KW'], { alg: 'ECDH-ES+A256KW' }, true]) {
    pre(`alg-type/${JSON.stringify(alg)}`, forged({ alg, enc: 'A256GCM', kid, cty: 'JWT' }), ['E_ALG']);
  }
  pre('alg-missing/jwe', forged({ enc: 'A256GCM', kid, cty: 'JWT' }), ['E_ALG']);
  pre('alg-case/lowercase', forged({ alg: 'ecdh-es+a256kw', enc: 'A256GCM', kid, cty: 'JWT' }), ['E_ALG']);
  pre('alg-mismatch/rsa-oaep-256-on-ec-key', forged({ alg: 'RSA-OAEP-256', enc: 'A256GCM', kid, cty: 'JWT' }), ['E_ALG', 'E_MALFORMED']);
  for (const enc of ['A128CBC-HS256', 'A256CBC-HS512', 'A128GCM', 'A192GCM', 'none', '', 'XC20P', 'a256gcm']) {
    pre(`enc-unknown/${enc || 'empty-string'}`, forged({ alg: 'ECDH-ES+A256KW', enc, kid, cty: 'JWT' }), ['E_ALG']);
  }
  pre('enc-unknown/missing', forged({ alg: 'ECDH-ES+A256KW', kid, cty: 'JWT' }), ['E_ALG']);
  pre('enc-unknown/number', forged({ alg: 'ECDH-ES+A256KW', enc: 256, kid, cty: 'JWT' }), ['E_ALG']);
  // zip: a real decompression bomb, correctly encrypted to the device: 10 MB of zeros deflates to ~10 KB.
  const bomb = deflateRawSync(Buffer.alloc(10 * 1024 * 1024), { level: 9 });
  pre('zip/DEF-bomb-valid-jwe', rawJwe(bomb, recipient, { header: { zip: 'DEF' } }), ['E_ZIP']);
  pre('zip/DEF-forged', forged({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', zip: 'DEF', kid, cty: 'JWT' }), ['E_ZIP']);
  pre('zip/unknown-value', forged({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', zip: 'GZIP', kid, cty: 'JWT' }), ['E_ZIP']);
  pre('zip/with-alg-none', forged({ alg: 'none', zip: 'DEF', kid }), ['E_ZIP', 'E_ALG']);
  pre('crit/jwe', rawJwe('x', recipient, { header: { crit: ['exp'], exp: 1 } }), ['E_MALFORMED']);
  for (const m of ['jwk', 'jku', 'x5u', 'x5c']) {
    const v = m === 'jwk' ? attackerKey().publicJwk : m === 'x5c' ? ['AAAA'] : 'https://attacker.example/keys';
    pre(`jwe-key-bearing/${m}`, rawJwe('x', recipient, { header: { [m]: v } }), ['E_MALFORMED']);
  }
  pre('cty/missing', rawJwe('x', recipient, { header: { cty: undefined } }), ['E_MALFORMED']);
  pre('cty/json', rawJwe('x', recipient, { header: { cty: 'json' } }), ['E_MALFORMED']);
  pre('epk/missing', rawJwe('x', recipient, { header: { epk: undefined } }), ['E_MALFORMED']);
  pre('epk/with-private-d', rawJwe('x', recipient, { header: { epk: { ...attackerKey().publicJwk, d: 'AAAA' } } }), ['E_MALFORMED']);
  pre('epk/wrong-curve', rawJwe('x', recipient, { header: { epk: { ...attackerKey().publicJwk, crv: 'P-384' } } }), ['E_MALFORMED']);
  pre(
    'epk/not-on-curve',
    rawJwe('x', recipient, { header: { epk: { kty: 'EC', crv: 'P-256', x: b64u(Buffer.alloc(32, 1)), y: b64u(Buffer.alloc(32, 2)) } } }),
    ['E_DECRYPT', 'E_MALFORMED'],
  );
  pre('epk/zero-point', rawJwe('x', recipient, { header: { epk: { kty: 'EC', crv: 'P-256', x: b64u(Buffer.alloc(32)), y: b64u(Buffer.alloc(32)) } } }), [
    'E_DECRYPT',
    'E_MALFORMED',
  ]);
  pre('epk/number', forged({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid, cty: 'JWT', epk: 1 }), ['E_MALFORMED']);

  // --- kid --------------------------------------------------------------
  pre('kid/unknown', forged({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: 'nope', cty: 'JWT' }), ['E_KID']);
  pre('kid/missing', forged({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', cty: 'JWT' }), ['E_KID']);
  pre('kid/missing-valid-jwe', rawJwe(valid, recipient, { header: { kid: undefined } }), ['E_KID']);
  pre('kid/number', forged({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: 1, cty: 'JWT' }), ['E_KID']);
  pre('kid/empty', forged({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: '', cty: 'JWT' }), ['E_KID']);
  pre('kid/proto', forged({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: '__proto__', cty: 'JWT' }), ['E_KID']);
  pre('kid/server-signing-kid', forged({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: ctx.serverSigning.kid, cty: 'JWT' }), ['E_KID']);
  pre('kid/device-signing-kid', forged({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: ctx.deviceSigning.kid, cty: 'JWT' }), ['E_KID']);
  pre('kid/other-recipient', rawJwe(valid, { ...recipient, kid: 'x'.repeat(43) }), ['E_KID']);
  pre('kid/very-long', forged({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: 'k'.repeat(3000), cty: 'JWT' }), ['E_KID']);

  // --- truncation and single-byte flips of the outer JWE, every segment ---
  let off = 0;
  for (let s = 0; s < 5; s++) {
    const seg = segs[s] ?? '';
    for (const p of positions(seg.length, s === 3 ? 14 : 8)) {
      pre(`truncate/${segNames[s]}/${p}`, valid.slice(0, off + p), PRE_AUTH_OUTER, validJti);
    }
    for (const p of positions(seg.length, s === 3 ? 60 : 40)) {
      pre(`flip/${segNames[s]}/${p}`, flipChar(valid, off + p, 1), PRE_AUTH_OUTER, validJti);
    }
    for (const p of positions(seg.length, 4)) {
      const b = Buffer.from(valid, 'latin1');
      b[off + p] = (b[off + p] ?? 0) ^ 0x80;
      pre(`flip-high-bit/${segNames[s]}/${p}`, b, ['E_MALFORMED'], validJti);
    }
    off += seg.length + 1;
  }
  pre('truncate/last-char', valid.slice(0, -1), PRE_AUTH_OUTER, validJti);
  pre('truncate/half', valid.slice(0, Math.floor(valid.length / 2)), PRE_AUTH_OUTER, validJti);
  pre('segment-swap/iv-tag', [segs[0], segs[1], segs[4], segs[3], segs[2]].join('.'), PRE_AUTH_OUTER, validJti);
  pre(
    'segment-swap/other-message-key',
    [
      segs[0],
      (
        await sealCommand(
          { serverId: ctx.serverId, deviceId: ctx.deviceId, action: 'selftest', userId: 'u', seq: fresh },
          { signer: ctx.serverSigning, recipient },
        )
      ).token.split('.')[1],
      ...segs.slice(2),
    ].join('.'),
    PRE_AUTH_OUTER,
    validJti,
  );

  // --- the inner JWS: valid JWE around something that must not verify --------
  const innerJti = randomUUID();
  const innerPayload = JSON.stringify(claims({ jti: innerJti }));
  const goodJws = rawJws({ alg: 'ES256', kid: ctx.serverSigning.kid, typ: 'JWT' }, innerPayload, { kind: 'es256', key: serverKey });
  const jwsSegs = goodJws.split('.');
  const jwsSegNames = ['header', 'payload', 'signature'];
  let joff = 0;
  for (let s = 0; s < 3; s++) {
    const seg = jwsSegs[s] ?? '';
    for (const p of positions(seg.length, 12)) {
      pre(`inner-flip/${jwsSegNames[s]}/${p}`, rawJwe(flipChar(goodJws, joff + p, 1), recipient), PRE_AUTH_INNER, innerJti);
    }
    for (const p of positions(seg.length, 3)) {
      pre(`inner-truncate/${jwsSegNames[s]}/${p}`, rawJwe(goodJws.slice(0, joff + p), recipient), PRE_AUTH_INNER, innerJti);
    }
    joff += seg.length + 1;
  }
  const attacker = attackerKey();
  const attackerKid = b64u(Buffer.alloc(32, 7));
  const wrapJws = (
    name: string,
    h: Record<string, unknown>,
    signer: Parameters<typeof rawJws>[2],
    codes: readonly ProtocolErrorCode[] = ['E_SIGNATURE'],
  ): void => {
    const jti = randomUUID();
    pre(name, rawJwe(rawJws(h, JSON.stringify(claims({ jti })), signer), recipient), codes, jti);
  };
  wrapJws('foreign-signer/attacker-key-own-kid', { alg: 'ES256', kid: attackerKid, typ: 'JWT' }, { kind: 'es256', key: attacker.key });
  wrapJws('foreign-signer/attacker-key-server-kid', { alg: 'ES256', kid: ctx.serverSigning.kid, typ: 'JWT' }, { kind: 'es256', key: attacker.key });
  wrapJws('foreign-signer/no-kid', { alg: 'ES256', typ: 'JWT' }, { kind: 'es256', key: serverKey });
  if ('d' in ctx.deviceSigning) {
    const deviceKey = privateKeyOf(ctx.deviceSigning as PrivateJwk);
    wrapJws('foreign-signer/device-own-key', { alg: 'ES256', kid: ctx.deviceSigning.kid, typ: 'JWT' }, { kind: 'es256', key: deviceKey });
    wrapJws('foreign-signer/device-own-key-server-kid', { alg: 'ES256', kid: ctx.serverSigning.kid, typ: 'JWT' }, { kind: 'es256', key: deviceKey });
    const jti = randomUUID();
    const { token } = await sealCommand(
      { serverId: ctx.serverId, deviceId: ctx.deviceId, action: 'delete', userId: 'adversary', seq: fresh, jti },
      { signer: ctx.deviceSigning as PrivateJwk, recipient },
    );
    pre('foreign-signer/device-own-key-sealcommand', token, ['E_SIGNATURE'], jti);
  }
  wrapJws('embedded-jwk/attacker-kid', { alg: 'ES256', kid: attackerKid, jwk: attacker.publicJwk, typ: 'JWT' }, { kind: 'es256', key: attacker.key });
  wrapJws('embedded-jwk/server-kid', { alg: 'ES256', kid: ctx.serverSigning.kid, jwk: attacker.publicJwk, typ: 'JWT' }, { kind: 'es256', key: attacker.key });
  wrapJws('embedded-jwk/no-kid', { alg: 'ES256', jwk: attacker.publicJwk, typ: 'JWT' }, { kind: 'es256', key: attacker.key });
  wrapJws(
    'embedded-jwk/pinned-key-itself',
    { alg: 'ES256', kid: ctx.serverSigning.kid, jwk: toPublicJwk(ctx.serverSigning), typ: 'JWT' },
    { kind: 'es256', key: serverKey },
  );
  wrapJws('jku/attacker-url', { alg: 'ES256', kid: attackerKid, jku: 'https://attacker.example/jwks', typ: 'JWT' }, { kind: 'es256', key: attacker.key });
  wrapJws('x5u/attacker-url', { alg: 'ES256', kid: attackerKid, x5u: 'https://attacker.example/cert', typ: 'JWT' }, { kind: 'es256', key: attacker.key });
  wrapJws('x5c/attacker-chain', { alg: 'ES256', kid: attackerKid, x5c: ['MIIB'], typ: 'JWT' }, { kind: 'es256', key: attacker.key });
  wrapJws('alg-none/jws-empty-signature', { alg: 'none', kid: ctx.serverSigning.kid, typ: 'JWT' }, { kind: 'none' }, ['E_MALFORMED', 'E_ALG']);
  wrapJws('alg-none/jws-junk-signature', { alg: 'none', kid: ctx.serverSigning.kid, typ: 'JWT' }, { kind: 'raw', signature: Buffer.from('x') }, ['E_ALG']);
  wrapJws('alg-none/jws-None', { alg: 'None', kid: ctx.serverSigning.kid, typ: 'JWT' }, { kind: 'raw', signature: Buffer.from('x') }, ['E_ALG']);
  const serverPubText = JSON.stringify(toPublicJwk(ctx.serverSigning));
  wrapJws(
    'alg-confusion/hs256-with-public-key',
    { alg: 'HS256', kid: ctx.serverSigning.kid, typ: 'JWT' },
    { kind: 'hs256', secret: Buffer.from(serverPubText) },
    ['E_ALG'],
  );
  for (const alg of ['RS256', 'PS256', 'ES384', 'ES512', 'EdDSA', 'ES256K']) {
    wrapJws(`jws-alg/${alg}`, { alg, kid: ctx.serverSigning.kid, typ: 'JWT' }, { kind: 'es256', key: serverKey }, ['E_ALG']);
  }
  wrapJws('jws-alg/missing', { kid: ctx.serverSigning.kid, typ: 'JWT' }, { kind: 'es256', key: serverKey }, ['E_ALG']);
  wrapJws('jws-crit/b64-false', { alg: 'ES256', kid: ctx.serverSigning.kid, b64: false, crit: ['b64'] }, { kind: 'es256', key: serverKey }, ['E_MALFORMED']);
  wrapJws('jws-crit/unknown', { alg: 'ES256', kid: ctx.serverSigning.kid, crit: ['x-attack'], 'x-attack': 1 }, { kind: 'es256', key: serverKey }, [
    'E_MALFORMED',
  ]);
  wrapJws('jws-signature/der-encoded', { alg: 'ES256', kid: ctx.serverSigning.kid, typ: 'JWT' }, { kind: 'raw', signature: Buffer.alloc(70, 0x30) });
  wrapJws('jws-signature/zero', { alg: 'ES256', kid: ctx.serverSigning.kid, typ: 'JWT' }, { kind: 'raw', signature: Buffer.alloc(64) });
  wrapJws('jws-signature/high-s-garbage', { alg: 'ES256', kid: ctx.serverSigning.kid, typ: 'JWT' }, { kind: 'raw', signature: Buffer.alloc(64, 0xff) });
  {
    // A valid server signature, then the payload swapped for another.
    const jti = randomUUID();
    const other = rawJws(
      { alg: 'ES256', kid: ctx.serverSigning.kid, typ: 'JWT' },
      JSON.stringify(claims({ jti: randomUUID(), action: 'selftest', params: {} })),
      { kind: 'es256', key: serverKey },
    );
    const spliced = `${jwsSegs[0]}.${b64u(JSON.stringify(claims({ jti, action: 'delete', params: {} })))}.${other.split('.')[2]}`;
    pre('jws-splice/signature-from-other-message', rawJwe(spliced, recipient), ['E_SIGNATURE'], jti);
  }
  pre('jwe-wraps/plain-json', rawJwe(JSON.stringify(claims()), recipient), ['E_MALFORMED']);
  pre('jwe-wraps/plain-json-seed-delete', rawJwe('{"device_id":"dev","action":"delete","user_id":"1"}', recipient), ['E_MALFORMED']);
  pre('jwe-wraps/empty', rawJwe(Buffer.alloc(0), recipient), ['E_MALFORMED', 'E_DECRYPT']);
  pre('jwe-wraps/non-utf8', rawJwe(Buffer.from([0xff, 0xfe, 0x00, 0x80, 0x2e, 0x2e]), recipient), ['E_MALFORMED']);
  pre('jwe-wraps/nested-jwe', rawJwe(valid, recipient), ['E_MALFORMED']);
  pre(
    'jwe-wraps/jws-json-serialization',
    rawJwe(JSON.stringify({ payload: b64u(innerPayload), signatures: [{ protected: jwsSegs[0], signature: jwsSegs[2] }] }), recipient),
    ['E_MALFORMED'],
  );
  pre('jwe-wraps/big-junk', rawJwe(Buffer.alloc(40_000, 0x41), recipient), ['E_MALFORMED']);

  // Authenticated by the pinned key, but the payload is not a claims object: no jti to ack.
  for (const [name, payload] of [
    ['not-json', 'this is not json'],
    ['json-array', '[1,2,3]'],
    ['json-null', 'null'],
    ['json-string', '"delete"'],
    ['non-utf8', Buffer.from([0xff, 0xfe, 0x7b, 0x7d]).toString('latin1')],
  ] as const) {
    const payloadBuf = Buffer.from(payload, 'latin1');
    const jws = `${b64json({ alg: 'ES256', kid: ctx.serverSigning.kid, typ: 'JWT' })}.${b64u(payloadBuf)}`;
    const sig = rawJws({ alg: 'ES256', kid: ctx.serverSigning.kid, typ: 'JWT' }, payloadBuf, { kind: 'es256', key: serverKey }).split('.')[2];
    add({ name: `claims-payload/${name}`, payload: Buffer.from(rawJwe(`${jws}.${sig}`, recipient)), codes: ['E_CLAIMS'], refused: false, acked: false });
  }

  // --- authenticated claims that must be refused (rejected ack with the code) ---
  const authed = async (name: string, c: Record<string, unknown>, codes: readonly ProtocolErrorCode[], extra: Partial<HostileCase> = {}): Promise<void> => {
    const token = await sealClaims(c, { signer: ctx.serverSigning, recipient });
    const jti = typeof c.jti === 'string' ? c.jti : undefined;
    // refused carries the jti only if it is a string of <= 64 characters; an ack needs it.
    const ackable = jti !== undefined && jti.length <= 64;
    add({ name, payload: Buffer.from(token), codes, refused: true, acked: ackable, ...(jti !== undefined ? { jti } : {}), ...extra });
  };
  const authedText = async (name: string, text: string, jti: string, codes: readonly ProtocolErrorCode[]): Promise<void> => {
    add({ name, payload: Buffer.from(serverSigned(text)), codes, refused: true, acked: true, jti });
  };

  for (const k of ['iss', 'aud', 'iat', 'exp', 'seq', 'device_id', 'action', 'user_id', 'params']) {
    const c = claims();
    delete c[k];
    await authed(`claims-missing/${k}`, c, ['E_CLAIMS']);
  }
  {
    const c = claims();
    delete c.jti;
    const token = await sealClaims(c, { signer: ctx.serverSigning, recipient });
    add({ name: 'claims-missing/jti', payload: Buffer.from(token), codes: ['E_CLAIMS'], refused: true, acked: false });
  }
  const wrongTypes: [string, string, unknown][] = [
    ['iss-number', 'iss', 1],
    ['iss-empty', 'iss', ''],
    ['iss-long', 'iss', 's'.repeat(65)],
    ['aud-array', 'aud', [ctx.deviceId]],
    ['aud-null', 'aud', null],
    ['iat-string', 'iat', String(now)],
    ['iat-float', 'iat', now + 0.5],
    ['iat-negative', 'iat', -1],
    ['exp-string', 'exp', 'tomorrow'],
    ['exp-huge', 'exp', 1e300],
    ['seq-string', 'seq', String(fresh)],
    ['seq-float', 'seq', fresh + 0.5],
    ['seq-zero', 'seq', 0],
    ['seq-negative', 'seq', -fresh],
    ['seq-unsafe', 'seq', 2 ** 53 + 2],
    ['seq-infinity-ish', 'seq', 1e308],
    ['seq-bool', 'seq', true],
    ['jti-number', 'jti', 12345],
    ['jti-not-uuid', 'jti', 'not-a-uuid'],
    ['jti-long', 'jti', `${randomUUID()}-${'x'.repeat(100)}`],
    ['device_id-object', 'device_id', { id: ctx.deviceId }],
    ['action-number', 'action', 1],
    ['action-array', 'action', ['update']],
    ['user_id-number', 'user_id', 7],
    ['user_id-empty', 'user_id', ''],
    ['user_id-long', 'user_id', 'u'.repeat(129)],
    ['params-array', 'params', [1]],
    ['params-string', 'params', '{}'],
    ['params-null', 'params', null],
  ];
  for (const [name, k, v] of wrongTypes) await authed(`claims-type/${name}`, claims({ [k]: v }), ['E_CLAIMS']);
  await authed('audience/wrong-aud', claims({ aud: ctx.otherDeviceId }), ['E_AUDIENCE']);
  await authed('audience/wrong-device_id', claims({ device_id: ctx.otherDeviceId }), ['E_AUDIENCE']);
  await authed('audience/both-other-device', claims({ aud: ctx.otherDeviceId, device_id: ctx.otherDeviceId }), ['E_AUDIENCE']);
  await authed(
    'audience/case-variant',
    claims({ aud: ctx.deviceId.toUpperCase() === ctx.deviceId ? ctx.deviceId.toLowerCase() : ctx.deviceId.toUpperCase() }),
    ['E_AUDIENCE'],
  );
  await authed('audience/topic-of-other-device', claims(), ['E_AUDIENCE'], { topicDeviceId: ctx.otherDeviceId });
  await authed('issuer/other-server', claims({ iss: 'other-server' }), ['E_ISSUER']);
  await authed('time/expired', claims({ iat: now - 3600, exp: now - 3000 }), ['E_EXPIRED'], { needsTrustedClock: true });
  await authed('time/not-yet-valid', claims({ iat: now + 3600, exp: now + 3900 }), ['E_NOT_YET_VALID'], { needsTrustedClock: true });
  await authed('time/exp-before-iat', claims({ iat: now, exp: now - 1 }), ['E_EXPIRED', 'E_CLAIMS']);
  await authed('time/ttl-over-a-week', claims({ iat: now, exp: now + 8 * 24 * 3600 }), ['E_CLAIMS', 'E_EXPIRED']);
  await authed('replay/seq-equal-last', claims({ seq: ctx.lastSeq }), ['E_REPLAY']);
  if (ctx.lastSeq > 1) await authed('replay/seq-one', claims({ seq: 1 }), ['E_REPLAY']);
  await authed('replay/reused-jti', claims({ jti: ctx.seenJti }), ['E_REPLAY']);
  await authed('replay/reused-jti-far-seq', claims({ jti: ctx.seenJti, seq: fresh + 1000 }), ['E_REPLAY']);
  for (const action of ['reboot', 'shell', '', 'UPDATE', '__proto__', 'constructor', 'toString']) {
    await authed(`action-unknown/${action || 'empty-string'}`, claims({ action, params: {} }), action === '' ? ['E_CLAIMS'] : ['E_ACTION']);
  }
  const badParams: [string, string, unknown][] = [
    ['update-empty', 'update', {}],
    ['update-unknown-member', 'update', { foo: 1 }],
    ['update-sensor-not-object', 'update', { sensor: 'on' }],
    ['update-sensor-unknown', 'update', { sensor: { enabled: true, exec: 'rm -rf /' } }],
    ['update-sensor-enabled-string', 'update', { sensor: { enabled: 'true' } }],
    ['update-interval-zero', 'update', { sensor: { sample_interval_s: 0 } }],
    ['update-interval-too-big', 'update', { sensor: { sample_interval_s: 86401 } }],
    ['update-interval-float', 'update', { sensor: { sample_interval_s: 1.5 } }],
    ['update-interval-string', 'update', { sensor: { sample_interval_s: '60' } }],
    ['update-name-too-long', 'update', { sensor: { name: 'n'.repeat(65) } }],
    ['update-reporting-wildcard', 'update', { reporting: { topic: 'provision/#' } }],
    ['update-reporting-sys', 'update', { reporting: { topic: '$SYS/broker' } }],
    ['update-gpio-64', 'update', { gpio: { status_led: 64 } }],
    ['update-gpio-negative', 'update', { gpio: { sensor_enable: -1 } }],
    ['update-gpio-duplicate', 'update', { gpio: { status_led: 4, sensor_enable: 4 } }],
    ['update-gpio-string', 'update', { gpio: { reset_button: '22' } }],
    ['update-broker-no-url', 'update', { broker: {} }],
    ['update-broker-http', 'update', { broker: { url: 'http://attacker.example' } }],
    ['update-broker-path', 'update', { broker: { url: 'mqtt://attacker.example/../../etc' } }],
    ['update-broker-ca-not-pem', 'update', { broker: { url: 'mqtt://b.example', ca: 'not a cert' } }],
    ['update-broker-version-3', 'update', { broker: { url: 'mqtt://b.example', protocol_version: 3 } }],
    ['update-rollback-too-short', 'update', { rollback_timeout_s: 1 }],
    ['update-user_id-empty', 'update', { user_id: '' }],
    ['request-with-member', 'request', { user: 'x' }],
    ['rotate-with-member', 'rotate', { force: true }],
    ['delete-with-member', 'delete', { force: true }],
    ['selftest-with-member', 'selftest', { cmd: 'id' }],
    ['update-many-keys', 'update', Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [`k${i}`, i]))],
    ['update-large-string', 'update', { sensor: { name: 'n'.repeat(30_000) } }],
  ];
  for (const [name, action, params] of badParams) await authed(`params/${name}`, claims({ action, params }), ['E_PARAMS']);
  {
    // JSON text an object literal cannot express: prototype pollution and duplicate members.
    const jti = randomUUID();
    const base = JSON.stringify(claims({ jti })).slice(0, -1);
    await authedText('params/proto-pollution', base.replace(/"params":\{.*\}$/, '"params":{"__proto__":{"sensor":{"enabled":true}}}}'), jti, ['E_PARAMS']);
    const jti2 = randomUUID();
    const base2 = JSON.stringify(claims({ jti: jti2 }));
    await authedText('params/constructor-prototype', base2.replace(/"params":\{.*\}\}$/, '"params":{"constructor":{"prototype":{"x":1}}}}'), jti2, [
      'E_PARAMS',
    ]);
  }
  {
    const jti = randomUUID();
    const text = JSON.stringify(claims({ jti, params: 'PLACEHOLDER' })).replace('"PLACEHOLDER"', nestedJson(3_000));
    await authedText('nested/params-3000-deep', text, jti, ['E_PARAMS']);
    const jti2 = randomUUID();
    const text2 = JSON.stringify(claims({ jti: jti2, params: 'PLACEHOLDER' })).replace('"PLACEHOLDER"', `{"sensor":${nestedJson(5_000)}}`);
    await authedText('nested/sensor-5000-deep', text2, jti2, ['E_PARAMS']);
    const jti3 = randomUUID();
    const text3 = JSON.stringify(claims({ jti: jti3, extra: 'PLACEHOLDER' })).replace('"PLACEHOLDER"', `${'['.repeat(9_000)}${']'.repeat(9_000)}`);
    // An unknown top-level claim is ignored (JWT rules) and params valid: refuse via a replayed seq.
    await authedText('nested/extra-claim-9000-deep-arrays', text3.replace(`"seq":${fresh}`, `"seq":${ctx.lastSeq}`), jti3, ['E_REPLAY']);
  }
  {
    // Over the cap but correctly sealed by the pinned key: refused on size, before any crypto.
    const jti = randomUUID();
    const big = JSON.stringify(claims({ jti, params: { sensor: { name: 'n'.repeat(60_000) } } }));
    add({ name: 'large-json/authenticated-over-cap', payload: Buffer.from(serverSigned(big)), codes: ['E_TOO_LARGE'], refused: false, acked: false, jti });
    const jti2 = randomUUID();
    const arr = JSON.stringify(claims({ jti: jti2, params: { sensor: { enabled: true } }, pad: Array.from({ length: 4000 }, (_, i) => i) }));
    await authedText('large-json/extra-claim-array-replayed', arr.replace(`"seq":${fresh}`, `"seq":${ctx.lastSeq}`), jti2, ['E_REPLAY']);
  }
  // Last: an authenticated, acked case, so a receiver can tell when the whole corpus was processed.
  await authed('sentinel/params-invalid-last', claims({ params: { sentinel: true } }), ['E_PARAMS']);
  return cases;
}
