import { expect } from 'chai';
import { KeyRing, TRUSTED_CLOCK, openAck, openCommand, openEnrollment, sealAck, sealCommand, sealEnrollment, toPublicJwk } from '../../protocol/index.js';
import { deviceRings, makeParty, type Party } from '../helpers/keys.js';

describe('protocol: round trips', () => {
  let server: Party;
  let ecDevice: Party;
  let rsaDevice: Party;

  before(async () => {
    [server, ecDevice, rsaDevice] = await Promise.all([makeParty(), makeParty(), makeParty({ rsa: true })]);
  });

  for (const kind of ['EC (ECDH-ES+A256KW)', 'RSA (RSA-OAEP-256)'] as const) {
    it(`command sealed to an ${kind} device opens with every claim intact`, async () => {
      const device = kind.startsWith('EC') ? ecDevice : rsaDevice;
      const { token, claims } = await sealCommand(
        { serverId: 'srv', deviceId: 'dev-1', action: 'update', userId: 'u1', params: { sensor: { enabled: true } }, seq: 7 },
        { signer: server.signing, recipient: toPublicJwk(device.encryption) },
      );
      const header = JSON.parse(Buffer.from(token.split('.')[0] ?? '', 'base64url').toString()) as Record<string, unknown>;
      expect(header).to.include({ alg: device.encryption.alg, enc: 'A256GCM', cty: 'JWT', kid: device.encryption.kid });
      const opened = await openCommand(token, { deviceId: 'dev-1', serverId: 'srv', clock: TRUSTED_CLOCK, ...(await deviceRings(device, server)) });
      expect(opened.claims).to.deep.equal(claims);
      expect(opened.signerKid).to.equal(server.signing.kid);
      expect(opened.decryptKid).to.equal(device.encryption.kid);
    });

    it(`ack from an ${kind.split(' ')[0]} device opens at the server`, async () => {
      const device = kind.startsWith('EC') ? ecDevice : rsaDevice;
      const { token, claims } = await sealAck(
        { deviceId: 'dev-1', serverId: 'srv', ref: 'c0ffee00-0000-4000-8000-000000000000', seq: 7, status: 'applied', code: 'OK', result: { a: 1 } },
        { signer: device.signing, recipient: toPublicJwk(server.encryption) },
      );
      const opened = await openAck(token, {
        serverId: 'srv',
        deviceId: 'dev-1',
        decryption: await KeyRing.create([server.encryption]),
        verification: await KeyRing.create([toPublicJwk(device.signing)]),
      });
      expect(opened.claims).to.deep.equal(claims);
    });
  }

  it('enrollment opens with its self-signature and returns the enrolled keys', async () => {
    const { token, claims } = await sealEnrollment(
      { deviceId: 'dev-9', serverId: 'srv', token: 'tok-123', signing: toPublicJwk(ecDevice.signing), encryption: toPublicJwk(ecDevice.encryption) },
      { signer: ecDevice.signing, recipient: toPublicJwk(server.encryption) },
    );
    const opened = await openEnrollment(token, { serverId: 'srv', topicDeviceId: 'dev-9', decryption: await KeyRing.create([server.encryption]) });
    expect(opened.claims).to.deep.equal(claims);
    expect(opened.signing).to.deep.equal(toPublicJwk(ecDevice.signing));
    expect(opened.encryption).to.deep.equal(toPublicJwk(ecDevice.encryption));
  });
});
