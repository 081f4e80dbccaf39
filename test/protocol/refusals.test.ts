import { expect } from 'chai';
import {
  KeyRing,
  PROTOCOL_ERROR_CODES,
  ProtocolError,
  TRUSTED_CLOCK,
  UNTRUSTED_CLOCK,
  checkReplay,
  openCommand,
  parsePublicJwk,
  sealClaims,
  sealCommand,
  toPublicJwk,
  type OpenCommandOptions,
  type ProtocolErrorCode,
} from '../../protocol/index.js';
import { deviceRings, makeParty, type Party } from '../helpers/keys.js';

const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');

async function refusal(p: Promise<unknown>): Promise<ProtocolError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(ProtocolError);
    return err as ProtocolError;
  }
  throw new Error('expected a refusal, but the message was accepted');
}

describe('protocol: every refusal has its code', () => {
  let server: Party;
  let device: Party;
  let other: Party;
  let opts: OpenCommandOptions;
  const seen = new Set<ProtocolErrorCode>();

  const seal = (over: Partial<Parameters<typeof sealCommand>[0]> = {}, signer?: Party) =>
    sealCommand(
      { serverId: 'srv', deviceId: 'dev-a', action: 'update', userId: 'u1', params: { sensor: { enabled: true } }, seq: 5, ...over },
      { signer: (signer ?? server).signing, recipient: toPublicJwk(device.encryption) },
    ).then((r) => r.token);

  const expectCode = async (p: Promise<unknown>, code: ProtocolErrorCode): Promise<ProtocolError> => {
    const err = await refusal(p);
    expect(err.code, err.message).to.equal(code);
    seen.add(code);
    return err;
  };

  /** A compact JWE-shaped string with the given protected header and junk parts. */
  const forged = (header: Record<string, unknown>) => `${b64(header)}.${'A'.repeat(43)}.${'A'.repeat(16)}.${'A'.repeat(40)}.${'A'.repeat(22)}`;

  before(async () => {
    [server, device, other] = await Promise.all([makeParty(), makeParty(), makeParty()]);
    opts = { deviceId: 'dev-a', serverId: 'srv', clock: TRUSTED_CLOCK, ...(await deviceRings(device, server)) };
  });

  after(() => {
    const missing = (Object.keys(PROTOCOL_ERROR_CODES) as ProtocolErrorCode[]).filter((c) => !seen.has(c));
    expect(missing, 'codes without a test').to.deep.equal([]);
  });

  it('E_TOO_LARGE: over the cap, before any parsing', async () => {
    await expectCode(openCommand('A'.repeat(64 * 1024 + 1), opts), 'E_TOO_LARGE');
    await expectCode(openCommand(await seal(), { ...opts, maxBytes: 100 }), 'E_TOO_LARGE');
  });

  it('E_MALFORMED: plaintext JSON (the seed fallback), empty input, bad header JSON', async () => {
    await expectCode(openCommand('{"device_id":"dev-a","action":"delete","user_id":"1"}', opts), 'E_MALFORMED');
    await expectCode(openCommand('', opts), 'E_MALFORMED');
    await expectCode(openCommand(`${Buffer.from('{not json').toString('base64url')}.A.AAAA.AAAA.AAAA`, opts), 'E_MALFORMED');
  });

  it('E_ALG: alg none/dir/RSA1_5/PBES2 and unknown enc are refused before any crypto', async () => {
    const kid = device.encryption.kid;
    for (const alg of ['none', 'dir', 'RSA1_5', 'PBES2-HS512+A256KW', 'A256KW', 'ECDH-ES']) {
      await expectCode(openCommand(forged({ alg, enc: 'A256GCM', kid, cty: 'JWT', p2c: 1e9, p2s: 'AAAA' }), opts), 'E_ALG');
    }
    await expectCode(openCommand(forged({ alg: 'ECDH-ES+A256KW', enc: 'A128CBC-HS256', kid, cty: 'JWT' }), opts), 'E_ALG');
  });

  it('E_ZIP: a compressed payload is never inflated', async () => {
    await expectCode(openCommand(forged({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', zip: 'DEF', kid: device.encryption.kid, cty: 'JWT' }), opts), 'E_ZIP');
  });

  it('E_KID: unknown or missing recipient kid', async () => {
    await expectCode(openCommand(forged({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: 'nope', cty: 'JWT' }), opts), 'E_KID');
    await expectCode(openCommand(forged({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', cty: 'JWT' }), opts), 'E_KID');
  });

  it('E_KID: a message sealed for device A is refused by device B', async () => {
    const token = await seal();
    const forB = { ...opts, deviceId: 'dev-b', ...(await deviceRings(other, server)) };
    await expectCode(openCommand(token, forB), 'E_KID');
  });

  it('E_DECRYPT: flipping any single character is refused', async () => {
    const token = await seal();
    const codes = new Set<string>();
    for (let i = 0; i < token.length; i++) {
      if (token[i] === '.') continue;
      const flipped = token.slice(0, i) + String.fromCharCode(token.charCodeAt(i) ^ 1) + token.slice(i + 1);
      const err = await refusal(openCommand(flipped, opts));
      codes.add(err.code);
    }
    expect(codes).to.include('E_DECRYPT');
    seen.add('E_DECRYPT');
    expect(
      [...codes].every((c) => ['E_MALFORMED', 'E_DECRYPT', 'E_ALG', 'E_KID'].includes(c)),
      [...codes].join(),
    ).to.equal(true);
  });

  it("E_SIGNATURE: a command signed by a key that is not pinned (the device's own) is refused", async () => {
    const err = await expectCode(openCommand(await seal({}, device), opts), 'E_SIGNATURE');
    expect(err.refused).to.equal(undefined);
  });

  it('E_CLAIMS: missing or mistyped claims (authenticated, so it carries refused info)', async () => {
    const recipient = toPublicJwk(device.encryption);
    const token = await sealClaims({ iss: 'srv', aud: 'dev-a', device_id: 'dev-a', jti: 'not-a-uuid', seq: 'five' }, { signer: server.signing, recipient });
    const err = await expectCode(openCommand(token, opts), 'E_CLAIMS');
    expect(err.refused?.signerKid).to.equal(server.signing.kid);
  });

  it('E_AUDIENCE: aud/device_id for another device, or the topic of another device', async () => {
    await expectCode(openCommand(await seal(), { ...opts, deviceId: 'dev-b' }), 'E_AUDIENCE');
    await expectCode(openCommand(await seal(), { ...opts, topicDeviceId: 'dev-b' }), 'E_AUDIENCE');
  });

  it('E_ISSUER: from an unexpected server id', async () => {
    await expectCode(openCommand(await seal({ serverId: 'other-srv' }), opts), 'E_ISSUER');
  });

  it('E_EXPIRED and E_NOT_YET_VALID only when the clock is trusted', async () => {
    const old = await seal({ now: Date.now() - 3600_000, ttlSeconds: 60 });
    await expectCode(openCommand(old, opts), 'E_EXPIRED');
    const future = await seal({ now: Date.now() + 3600_000 });
    await expectCode(openCommand(future, opts), 'E_NOT_YET_VALID');
    // A Pi without RTC and without NTP: time is not checked, seq still protects.
    const opened = await openCommand(old, { ...opts, clock: UNTRUSTED_CLOCK });
    expect(opened.claims.seq).to.equal(5);
  });

  it('E_REPLAY: seq not above the last applied, or a jti already seen, with refused jti/seq for the ack', async () => {
    const token = await seal({ seq: 5 });
    const err = await expectCode(openCommand(token, { ...opts, replay: { check: (s, j) => checkReplay({ lastSeq: 5, recentJtis: [] }, s, j) } }), 'E_REPLAY');
    expect(err.refused?.seq).to.equal(5);
    const { claims } = await openCommand(token, opts);
    await expectCode(
      openCommand(token, { ...opts, replay: { check: (s, j) => checkReplay({ lastSeq: 1, recentJtis: new Set([claims.jti]) }, s, j) } }),
      'E_REPLAY',
    );
  });

  it('E_ACTION and E_PARAMS: unknown action, params outside the schema', async () => {
    const recipient = toPublicJwk(device.encryption);
    const base = {
      iss: 'srv',
      aud: 'dev-a',
      device_id: 'dev-a',
      jti: crypto.randomUUID(),
      seq: 9,
      user_id: 'u',
      iat: Math.floor(Date.now() / 1000),
      exp: Math.floor(Date.now() / 1000) + 60,
    };
    await expectCode(openCommand(await sealClaims({ ...base, action: 'reboot', params: {} }, { signer: server.signing, recipient }), opts), 'E_ACTION');
    const err = await expectCode(
      openCommand(await sealClaims({ ...base, action: 'update', params: { gpio: { status_led: 99 } } }, { signer: server.signing, recipient }), opts),
      'E_PARAMS',
    );
    expect(err.message).to.contain('params.gpio.status_led');
    await expectCode(
      sealCommand(
        { serverId: 'srv', deviceId: 'dev-a', action: 'delete', userId: 'u', params: { force: true }, seq: 1 },
        { signer: server.signing, recipient },
      ),
      'E_PARAMS',
    );
  });

  it('E_KEY: a JWK whose kid is not its thumbprint, or a private key offered as public', async () => {
    await expectCode(parsePublicJwk({ ...toPublicJwk(device.signing), kid: 'wrong' }), 'E_KEY');
    await expectCode(parsePublicJwk(device.signing), 'E_KEY');
    await expectCode(
      KeyRing.create([]).then(() => parsePublicJwk({ kty: 'oct', k: 'AAAA', kid: 'x', use: 'enc', alg: 'A256KW' })),
      'E_KEY',
    );
  });
});
