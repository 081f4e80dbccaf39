import { expect } from 'chai';
import {
  KeyRing,
  TRUSTED_CLOCK,
  openAck,
  openCommand,
  openEnrollment,
  openReport,
  sealAck,
  sealCommand,
  sealEnrollment,
  sealReport,
  toPublicJwk,
  type ReportInput,
} from '../../protocol/index.js';
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

  describe('reports', () => {
    const input = (over: Partial<ReportInput> = {}): ReportInput => ({
      deviceId: 'dev-1',
      serverId: 'srv',
      reason: 'connect',
      session: 'c0ffee00-0000-4000-8000-000000000001',
      conn: 1,
      intervalSeconds: 300,
      agentVersion: '0.1.0',
      nodeVersion: 'v26.12.1',
      lastSeq: 12,
      kids: { sig: 'sig-1', enc: 'enc-1' },
      settingsDigest: `sha256:${'ab'.repeat(32)}`,
      uptimeSeconds: 42.7,
      selftest: { ok: true, at: 1_700_000_000 },
      ...over,
    });
    const opts = async (deviceId = 'dev-1') => ({
      serverId: 'srv',
      deviceId,
      decryption: await KeyRing.create([server.encryption]),
      verification: await KeyRing.create([toPublicJwk(ecDevice.signing)]),
    });

    it('a report from the device opens at the server with every claim intact', async () => {
      const { token, claims } = await sealReport(input(), { signer: ecDevice.signing, recipient: toPublicJwk(server.encryption) });
      const opened = await openReport(token, await opts());
      expect(opened.claims).to.deep.equal(claims);
      expect(opened.claims.uptime_s).to.equal(42);
      expect(opened.signerKid).to.equal(ecDevice.signing.kid);
    });

    it('a report signed by another key, for another device or with a bad interval or digest is refused', async () => {
      const keys = { signer: ecDevice.signing, recipient: toPublicJwk(server.encryption) };
      const { token } = await sealReport(input({ selftest: null }), keys);
      await openReport(token, await opts('dev-2')).then(
        () => expect.fail('opened for the wrong device'),
        (err: { code?: string }) => expect(err.code).to.equal('E_ISSUER'),
      );
      const other = await sealReport(input(), { signer: rsaDevice.signing, recipient: toPublicJwk(server.encryption) });
      await openReport(other.token, await opts()).then(
        () => expect.fail('opened with an unregistered signer'),
        (err: { code?: string }) => expect(err.code).to.match(/^E_/),
      );
      for (const bad of [input({ intervalSeconds: 1 }), input({ settingsDigest: 'md5:00' })]) {
        await sealReport(bad, keys).then(
          () => expect.fail('sealed a bad report'),
          (err: { code?: string }) => expect(err.code).to.equal('E_CLAIMS'),
        );
      }
    });
  });
});
