/** Release manifests (signed by the release key), the chunk index, transfer frames and the upgrade params. */
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { CompactSign, importJWK } from 'jose';
import {
  KeyRing,
  RELEASE_CHUNK_BYTES,
  checkChunkIndex,
  chunkCount,
  chunkMatches,
  compareVersions,
  encodeChunkFrame,
  encodeFetch,
  generateSigningKey,
  parseChunkFrame,
  parseFetch,
  signReleaseManifest,
  validateParams,
  verifyReleaseManifest,
  type PrivateJwk,
  type ReleaseManifest,
} from '../../protocol/index.js';

function artifactOf(bytes: number): { data: Buffer; index: Buffer; manifest: ReleaseManifest } {
  const data = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) data[i] = (i * 31 + 7) & 0xff;
  const count = chunkCount(bytes);
  const index = Buffer.concat(
    Array.from({ length: count }, (_, n) =>
      createHash('sha256')
        .update(data.subarray(n * RELEASE_CHUNK_BYTES, (n + 1) * RELEASE_CHUNK_BYTES))
        .digest(),
    ),
  );
  const manifest: ReleaseManifest = {
    format: 1,
    version: '1.2.3',
    arch: 'arm64',
    node: { ships: false, version: '20.19.2', abi: '115', binary_sha256: null },
    gpio: 'native',
    snapshot: false,
    artifact: { bytes, sha256: createHash('sha256').update(data).digest('hex'), unpacked_bytes: bytes * 3 },
    chunks: { bytes: RELEASE_CHUNK_BYTES, count, index_sha256: createHash('sha256').update(index).digest('hex') },
    created_at: '2026-12-04T10:00:00.000Z',
  };
  return { data, index, manifest };
}

describe('protocol: release manifests and transfer', () => {
  let releaseKey: PrivateJwk;
  let commandKey: PrivateJwk;
  let releaseRing: KeyRing;

  before(async () => {
    [releaseKey, commandKey] = await Promise.all([generateSigningKey(), generateSigningKey()]);
    releaseRing = await KeyRing.create([releaseKey]);
  });

  it('a manifest signed by the release key verifies, and every chunk matches the signed index', async () => {
    const { data, index, manifest } = artifactOf(3 * RELEASE_CHUNK_BYTES + 100);
    const jws = await signReleaseManifest(manifest, releaseKey);
    const v = await verifyReleaseManifest(jws, releaseRing);
    expect(v.manifest).to.deep.equal(manifest);
    expect(v.signerKid).to.equal(releaseKey.kid);
    checkChunkIndex(v.manifest, index);
    for (let n = 0; n < manifest.chunks.count; n++) {
      expect(chunkMatches(index, n, data.subarray(n * RELEASE_CHUNK_BYTES, (n + 1) * RELEASE_CHUNK_BYTES))).to.equal(true);
    }
    const tampered = Buffer.from(data.subarray(0, RELEASE_CHUNK_BYTES));
    tampered[100] = (tampered[100] ?? 0) ^ 1;
    expect(chunkMatches(index, 0, tampered)).to.equal(false);
    const badIndex = Buffer.from(index);
    badIndex[0] = (badIndex[0] ?? 0) ^ 1;
    expect(() => checkChunkIndex(manifest, badIndex))
      .to.throw()
      .with.property('code', 'E_SIGNATURE');
  });

  it('a manifest signed by another key (the command key), or altered, or of another typ, is refused', async () => {
    const { manifest } = artifactOf(1000);
    const byCommandKey = await signReleaseManifest(manifest, commandKey);
    await verifyReleaseManifest(byCommandKey, releaseRing).then(
      () => expect.fail('verified'),
      (err: { code: string }) => expect(err.code).to.equal('E_SIGNATURE'),
    );
    const jws = await signReleaseManifest(manifest, releaseKey);
    const [h, , s] = jws.split('.');
    const altered = `${h}.${Buffer.from(JSON.stringify({ ...manifest, arch: 'x64' })).toString('base64url')}.${s}`;
    await verifyReleaseManifest(altered, releaseRing).then(
      () => expect.fail('verified'),
      (err: { code: string }) => expect(err.code).to.equal('E_SIGNATURE'),
    );
    const asJwt = await new CompactSign(Buffer.from(JSON.stringify(manifest)))
      .setProtectedHeader({ alg: 'ES256', kid: releaseKey.kid, typ: 'JWT' })
      .sign(await importJWK({ ...releaseKey }, 'ES256'));
    await verifyReleaseManifest(asJwt, releaseRing).then(
      () => expect.fail('verified'),
      (err: { code: string }) => expect(err.code).to.equal('E_MALFORMED'),
    );
  });

  it('a well-signed manifest with an unknown member or a count that does not fit its size is refused (E_PARAMS)', async () => {
    const { manifest } = artifactOf(1000);
    const sign = async (payload: unknown): Promise<string> =>
      new CompactSign(Buffer.from(JSON.stringify(payload)))
        .setProtectedHeader({ alg: 'ES256', kid: releaseKey.kid, typ: 'sensor-agent-release+jws' })
        .sign(await importJWK({ ...releaseKey }, 'ES256'));
    for (const bad of [
      { ...manifest, extra: 1 },
      { ...manifest, chunks: { ...manifest.chunks, count: 2 } },
      { ...manifest, version: 'v1' },
    ]) {
      await verifyReleaseManifest(await sign(bad), releaseRing).then(
        () => expect.fail('verified'),
        (err: { code: string }) => expect(err.code).to.equal('E_PARAMS'),
      );
    }
  });

  it('compares versions by semantic-version precedence', () => {
    expect(compareVersions('0.2.0', '0.1.9')).to.equal(1);
    expect(compareVersions('0.10.0', '0.9.0')).to.equal(1);
    expect(compareVersions('1.0.0-rc.1', '1.0.0')).to.equal(-1);
    expect(compareVersions('1.0.0-rc.2', '1.0.0-rc.10')).to.equal(-1);
    expect(compareVersions('1.0.0-alpha', '1.0.0-1')).to.equal(1);
    expect(compareVersions('2.0.0', '2.0.0')).to.equal(0);
    expect(() => compareVersions('2.0', '2.0.0'))
      .to.throw()
      .with.property('code', 'E_PARAMS');
  });

  it('fetch requests and chunk frames round-trip; malformed ones are refused', () => {
    const sha = 'ab'.repeat(32);
    expect(parseFetch(encodeFetch({ v: 1, sha256: sha, index: true }))).to.deep.equal({ v: 1, sha256: sha, index: true });
    expect(parseFetch(encodeFetch({ v: 1, sha256: sha, from: 4, count: 8 }))).to.deep.equal({ v: 1, sha256: sha, from: 4, count: 8 });
    for (const bad of ['{}', '[]', 'x', `{"v":1,"sha256":"${sha}","from":0,"count":17}`, `{"v":1,"sha256":"${sha}","index":true,"from":1}`]) {
      expect(() => parseFetch(Buffer.from(bad)))
        .to.throw()
        .with.property('code', 'E_MALFORMED');
    }
    expect(() => parseFetch(Buffer.alloc(300, 32)))
      .to.throw()
      .with.property('code', 'E_TOO_LARGE');
    const data = Buffer.from('hello chunk');
    const frame = parseChunkFrame(encodeChunkFrame({ sha256: sha, kind: 'chunk', number: 7, data }));
    expect(frame).to.deep.include({ sha256: sha, kind: 'chunk', number: 7 });
    expect(frame.data.equals(data)).to.equal(true);
    expect(() => parseChunkFrame(Buffer.from('SAC0' + 'x'.repeat(60))))
      .to.throw()
      .with.property('code', 'E_MALFORMED');
  });

  it('upgrade params: a compact JWS manifest, bounded deadline, https mirror only', () => {
    const manifest = 'aaaa.bbbb.cccccccccc';
    expect(validateParams('upgrade', { manifest, deadline_s: 120, allow_downgrade: true })).to.deep.equal({ manifest, deadline_s: 120, allow_downgrade: true });
    for (const bad of [{}, { manifest: 'not a jws at all' }, { manifest, deadline_s: 5 }, { manifest, mirror: 'http://x/y' }, { manifest, other: 1 }]) {
      expect(() => validateParams('upgrade', bad))
        .to.throw()
        .with.property('code', 'E_PARAMS');
    }
  });
});
