/** Tokens cross both ways with an independent JOSE implementation (panva/jose). */
import { expect } from 'chai';
import { CompactEncrypt, SignJWT, compactDecrypt, importJWK, jwtVerify } from 'jose';
import { TRUSTED_CLOCK, openCommand, sealCommand, toPublicJwk, type PrivateJwk, type PublicJwk } from '../../protocol/index.js';
import { deviceRings, makeParty, type Party } from '../helpers/keys.js';

const asJose = (jwk: PublicJwk | PrivateJwk) => importJWK({ ...jwk }, jwk.alg);

describe('protocol: interoperability with the jose package', () => {
  let server: Party;
  let ec: Party;
  let rsa: Party;

  before(async () => {
    [server, ec, rsa] = await Promise.all([makeParty(), makeParty(), makeParty({ rsa: true })]);
  });

  for (const kind of ['EC', 'RSA'] as const) {
    it(`a nested token made by jose opens with our openCommand (${kind} device)`, async () => {
      const device = kind === 'EC' ? ec : rsa;
      const now = Math.floor(Date.now() / 1000);
      const jws = await new SignJWT({ device_id: 'dev-x', action: 'rotate', user_id: 'u7', params: {}, seq: 3 })
        .setProtectedHeader({ alg: 'ES256', kid: server.signing.kid, typ: 'JWT' })
        .setIssuer('srv')
        .setAudience('dev-x')
        .setIssuedAt(now)
        .setExpirationTime(now + 60)
        .setJti(crypto.randomUUID())
        .sign(await asJose(server.signing));
      const jwe = await new CompactEncrypt(new TextEncoder().encode(jws))
        .setProtectedHeader({ alg: device.encryption.alg, enc: 'A256GCM', kid: device.encryption.kid, cty: 'JWT' })
        .encrypt(await asJose(toPublicJwk(device.encryption)));
      const opened = await openCommand(jwe, { deviceId: 'dev-x', serverId: 'srv', clock: TRUSTED_CLOCK, ...(await deviceRings(device, server)) });
      expect(opened.claims).to.include({ action: 'rotate', user_id: 'u7', seq: 3, iss: 'srv' });
    });

    it(`our sealed command is decrypted and verified by jose (${kind} device)`, async () => {
      const device = kind === 'EC' ? ec : rsa;
      const { token, claims } = await sealCommand(
        { serverId: 'srv', deviceId: 'dev-x', action: 'selftest', userId: 'u1', seq: 4 },
        { signer: server.signing, recipient: toPublicJwk(device.encryption) },
      );
      const { plaintext, protectedHeader } = await compactDecrypt(token, await asJose(device.encryption), {
        keyManagementAlgorithms: [device.encryption.alg],
        contentEncryptionAlgorithms: ['A256GCM'],
      });
      expect(protectedHeader).to.include({ cty: 'JWT', enc: 'A256GCM', kid: device.encryption.kid });
      const { payload } = await jwtVerify(new TextDecoder().decode(plaintext), await asJose(toPublicJwk(server.signing)), {
        algorithms: ['ES256'],
        issuer: 'srv',
        audience: 'dev-x',
      });
      expect(payload).to.deep.equal({ ...claims });
    });
  }
});
