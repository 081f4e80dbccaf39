/**
 * The hostile corpus at the protocol level: every case is refused by
 * openCommand with one of its expected codes, and exactly the cases refused
 * before the signature verified (or whose signed payload is not a claims
 * object) come without `refused`, so an agent can never ack them.
 */
import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import { ProtocolError, TRUSTED_CLOCK, UNTRUSTED_CLOCK, checkReplay, openCommand, toPublicJwk, type OpenCommandOptions } from '../../protocol/index.js';
import { buildHostileCorpus, type HostileCase } from '../helpers/corpus.js';
import { deviceRings, makeParty } from '../helpers/keys.js';

const [server, device] = await Promise.all([makeParty(), makeParty()]);
const seenJti = randomUUID();
const lastSeq = 41;
const corpus = await buildHostileCorpus({
  serverId: 'srv',
  deviceId: 'dev-a',
  otherDeviceId: 'dev-b',
  serverSigning: server.signing,
  deviceSigning: device.signing,
  deviceEncryption: toPublicJwk(device.encryption),
  lastSeq,
  seenJti,
});
const rings = await deviceRings(device, server);
const baseOpts: OpenCommandOptions = {
  deviceId: 'dev-a',
  serverId: 'srv',
  clock: TRUSTED_CLOCK,
  ...rings,
  replay: { check: (seq, jti) => checkReplay({ lastSeq, recentJtis: [seenJti] }, seq, jti) },
};

async function refusalOf(c: HostileCase, opts: OpenCommandOptions): Promise<ProtocolError> {
  try {
    await openCommand(c.payload, { ...opts, ...(c.topicDeviceId ? { topicDeviceId: c.topicDeviceId } : {}) });
  } catch (err) {
    if (err instanceof ProtocolError) return err;
    throw new Error(`${c.name}: threw a non-protocol error: ${String(err)}`, { cause: err });
  }
  throw new Error(`${c.name}: was accepted`);
}

function checkCase(c: HostileCase, err: ProtocolError): void {
  expect(c.codes, `${c.name}: refused with ${err.code} (${err.message})`).to.include(err.code);
  if (c.refused) {
    expect(err.refused, `${c.name}: authenticated refusal must carry refused`).to.not.equal(undefined);
    if (c.acked) expect(err.refused?.jti, `${c.name}: refused.jti`).to.equal(c.jti);
    else expect(err.refused?.jti, `${c.name}: no usable jti`).to.equal(undefined);
  } else {
    expect(err.refused, `${c.name}: refused before authentication must not carry refused (${err.code})`).to.equal(undefined);
  }
}

const byClass = new Map<string, HostileCase[]>();
for (const c of corpus) byClass.set(c.cls, [...(byClass.get(c.cls) ?? []), c]);

describe('adversarial corpus: refused by openCommand with the expected code class', () => {
  it(`has at least 500 named cases covering every class of the issue (${corpus.length} cases, ${byClass.size} classes)`, () => {
    expect(corpus.length).to.be.at.least(500);
    expect(new Set(corpus.map((c) => c.name)).size).to.equal(corpus.length);
    const required = [
      'truncate',
      'flip',
      'inner-flip',
      'inner-truncate',
      'empty',
      'huge',
      'non-utf8',
      'header-json',
      'base64url',
      'alg-none',
      'rsa1_5',
      'pbes2',
      'dir',
      'zip',
      'enc-unknown',
      'kid',
      'foreign-signer',
      'embedded-jwk',
      'jwe-wraps',
      'claims-type',
      'claims-missing',
      'audience',
      'time',
      'replay',
      'params',
      'nested',
      'large-json',
    ];
    expect(
      required.filter((r) => !byClass.has(r)),
      'missing classes',
    ).to.deep.equal([]);
    // Single-byte flips and truncations reach every segment of the JWE and of the nested JWS.
    for (const seg of ['header', 'encrypted_key', 'iv', 'ciphertext', 'tag']) {
      expect(
        corpus.some((c) => c.name.startsWith(`flip/${seg}/`)),
        seg,
      ).to.equal(true);
      expect(
        corpus.some((c) => c.name.startsWith(`truncate/${seg}/`)),
        seg,
      ).to.equal(true);
    }
    for (const seg of ['header', 'payload', 'signature'])
      expect(
        corpus.some((c) => c.name.startsWith(`inner-flip/${seg}/`)),
        seg,
      ).to.equal(true);
    expect(corpus.filter((c) => c.acked).length, 'authenticated, acked cases').to.be.at.least(50);
  });

  for (const [cls, cases] of byClass) {
    it(`${cls} (${cases.length})`, async () => {
      for (const c of cases) checkCase(c, await refusalOf(c, baseOpts));
    });
  }

  it('without a trusted clock only the time cases change: nothing else is accepted', async () => {
    for (const c of corpus) {
      if (c.needsTrustedClock) continue;
      if (c.payload.length > 1024 * 1024) continue; // the size check does not depend on the clock
      checkCase(c, await refusalOf(c, { ...baseOpts, clock: UNTRUSTED_CLOCK }));
    }
  });

  it('every input over the size cap is refused on size, before anything is parsed', async () => {
    for (const c of corpus.filter((x) => x.payload.length > 64 * 1024)) {
      const err = await refusalOf(c, baseOpts);
      expect(err.code, c.name).to.equal('E_TOO_LARGE');
    }
  });
});
