import { expect } from 'chai';
import {
  KeyRing,
  TRUSTED_CLOCK,
  compareReportPositions,
  openAck,
  openCommand,
  openEnrollment,
  openReport,
  reportPosition,
  sealAck,
  sealCommand,
  sealEnrollment,
  sealReport,
  toPublicJwk,
  type ReportClaims,
  type ReportInput,
  type ReportPosition,
  type ReportReason,
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
      for (const bad of [
        input({ intervalSeconds: 1 }),
        input({ settingsDigest: 'md5:00' }),
        input({ order: { run: 0, n: 1 } }),
        input({ order: { run: 1, n: 0 } }), // n 0 is an offline report's
        input({ reason: 'offline', order: { run: 1, n: 3 } }),
      ]) {
        await sealReport(bad, keys).then(
          () => expect.fail('sealed a bad report'),
          (err: { code?: string }) => expect(err.code).to.equal('E_CLAIMS'),
        );
      }
    });

    it('the order claims (run, n) travel intact, are absent in a legacy report, and rank a will after its connection', async () => {
      const keys = { signer: ecDevice.signing, recipient: toPublicJwk(server.encryption) };
      const at = async (reason: ReportReason, conn: number, order?: { run: number; n: number }) =>
        (await openReport((await sealReport(input({ reason, conn, ...(order ? { order } : {}) }), keys)).token, await opts())).claims;
      const c = await at('connect', 2, { run: 3, n: 1 });
      expect([c.run, c.n]).to.deep.equal([3, 1]);
      const legacy = await at('connect', 2);
      expect('run' in legacy || 'n' in legacy).to.equal(false);
      expect(reportPosition(legacy)).to.equal(undefined);
      const pos = (claims: ReportClaims): ReportPosition => reportPosition(claims) as ReportPosition;
      const interval = pos(await at('interval', 2, { run: 3, n: 9 }));
      const will = pos(await at('offline', 2, { run: 3, n: 0 }));
      const next = pos(await at('connect', 3, { run: 3, n: 1 }));
      const nextRun = pos(await at('connect', 1, { run: 4, n: 1 }));
      const ordered = [pos(c), interval, will, next, nextRun];
      for (let i = 1; i < ordered.length; i++) expect(compareReportPositions(ordered[i - 1] as ReportPosition, ordered[i] as ReportPosition)).to.be.below(0);
      expect(compareReportPositions(will, will)).to.equal(0);
    });
  });
});
