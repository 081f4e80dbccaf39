/**
 * Releases on the server: the release key made by init and by `release
 * keygen` (old data directories have none) and copied by bundle; `release
 * add|list|show|remove` through the CLI with a real agent tree made here
 * (a fake .build-info.json and files), the artifact reproducible and its
 * manifest verifying with release.jwks, the chunk index matching the chunks;
 * refusals (duplicate, no .build-info.json, over 64 MiB, a tampered artifact,
 * a manifest signed by another key, removing a release in use) exit 2 and
 * change nothing.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, copyFile, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  KeyRing,
  RELEASE_CHUNK_BYTES,
  generateSigningKey,
  parseJwkSet,
  signReleaseManifest,
  toPublicJwk,
  verifyReleaseManifest,
  type ReleaseManifest,
  type AckClaims,
} from '../../protocol/index.js';
import { ackEffectsOf } from '../../server/core/actions/table.js';
import { CommandSender } from '../../server/core/command-sender.js';
import { openDataDir } from '../../server/data-dir.js';
import { runServerCli, useInitializedDataDir } from './run-cli.js';
import { makeSimDevice } from './sim-fleet.js';
import { makeTree } from './release-tree.js';

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('server: releases (release key, release add/list/show/remove)', function () {
  this.timeout(120_000);
  const suite = useInitializedDataDir('provision-release-');
  const cli = (...args: string[]) => runServerCli([...args, '--data', suite.data], { timeoutMs: 60_000 });

  it('init makes the release key (0600) and release.jwks (0644), apart from the command keys', async () => {
    const key = await stat(join(suite.data, 'keys', 'release.jwk'));
    expect(key.mode & 0o777).to.equal(0o600);
    const jwks = await stat(join(suite.data, 'release.jwks'));
    expect(jwks.mode & 0o777).to.equal(0o644);
    const set = await parseJwkSet(JSON.parse(await readFile(join(suite.data, 'release.jwks'), 'utf8')), 'sig');
    const trust = JSON.parse(await readFile(join(suite.data, 'keys', 'trust.jwks'), 'utf8')) as { keys: { kid: string }[] };
    expect(set).to.have.length(1);
    expect(trust.keys.map((k) => k.kid)).to.not.include(set[0]?.kid);
    const again = await cli('release', 'keygen');
    expect(again.code).to.equal(2);
    expect(again.stderr).to.contain('E_KEYS_EXIST');
  });

  it('adds an agent-only release: reproducible tar (sorted, owner 0, build time), manifest verifies with release.jwks, index matches the chunks', async () => {
    const tree = await makeTree(join(suite.dir, 'tree-0.2.0'), { version: '0.2.0' });
    const r = await cli('release', 'add', tree, '--agent-only', '--json');
    expect(r.code, r.stderr).to.equal(0);
    const view = JSON.parse(r.stdout) as { version: string; arch: string; sha256: string; bytes: number; chunks: number };
    expect(view).to.include({ version: '0.2.0', arch: 'arm64' });
    const dir = join(suite.data, 'releases', '0.2.0-arm64');
    expect((await readdir(dir)).sort()).to.deep.equal(['artifact.tar.gz', 'index.bin', 'manifest.json', 'manifest.jws']);
    const artifact = await readFile(join(dir, 'artifact.tar.gz'));
    expect(sha256(artifact)).to.equal(view.sha256);
    expect(artifact.length).to.equal(view.bytes);

    // The manifest verifies with the release keys the boards pin, and only with them.
    const ring = await KeyRing.create(await parseJwkSet(JSON.parse(await readFile(join(suite.data, 'release.jwks'), 'utf8')), 'sig'));
    const jws = (await readFile(join(dir, 'manifest.jws'), 'utf8')).trim();
    const { manifest } = await verifyReleaseManifest(jws, ring);
    const commandKeys = await KeyRing.create(await parseJwkSet(JSON.parse(await readFile(join(suite.data, 'keys', 'trust.jwks'), 'utf8'))));
    let refused = '';
    await verifyReleaseManifest(jws, commandKeys).catch((err: { code: string }) => (refused = err.code));
    expect(refused).to.equal('E_SIGNATURE');
    expect(manifest).to.deep.include({ version: '0.2.0', arch: 'arm64', gpio: 'native', snapshot: true });
    expect(manifest.node).to.deep.equal({
      ships: false,
      version: '22.11.0',
      abi: '127',
      binary_sha256: sha256(await readFile(join(tree, 'node', 'bin', 'node'))),
    });
    expect(manifest.artifact.sha256).to.equal(view.sha256);
    expect(manifest.chunks.bytes).to.equal(RELEASE_CHUNK_BYTES);
    expect(manifest.chunks.count)
      .to.equal(Math.ceil(artifact.length / RELEASE_CHUNK_BYTES))
      .and.to.be.above(1);

    // The index is each chunk's SHA-256, in order; its own digest is what the manifest signs.
    const index = await readFile(join(dir, 'index.bin'));
    expect(sha256(index)).to.equal(manifest.chunks.index_sha256);
    for (let n = 0; n < manifest.chunks.count; n++) {
      const chunk = artifact.subarray(n * RELEASE_CHUNK_BYTES, (n + 1) * RELEASE_CHUNK_BYTES);
      expect(sha256(chunk), `chunk ${n}`).to.equal(index.subarray(n * 32, n * 32 + 32).toString('hex'));
    }

    // tar: sorted names, owner/group 0, every mtime the build time, no node/ in an agent-only release.
    const listing = execFileSync('tar', ['--numeric-owner', '--full-time', '-tvzf', join(dir, 'artifact.tar.gz')], { encoding: 'utf8' })
      .trim()
      .split('\n');
    const names = execFileSync('tar', ['-tzf', join(dir, 'artifact.tar.gz')], { encoding: 'utf8' })
      .trim()
      .split('\n');
    expect(names.some((n) => n.startsWith('./node'))).to.equal(false);
    expect(names).to.include.members(['./.build-info.json', './sensor-agent.mjs', './native/epoll.node', './sensor-agent.blob']);
    expect([...names].sort()).to.deep.equal(names);
    for (const line of listing) {
      expect(line, line).to.match(/^\S+ 0\/0 /);
      expect(line, line).to.contain('2026-03-01 12:00:00');
    }

    // Packing the same tree again gives the same bytes (a second data-less pack through the CLI is refused as a duplicate, so pack here).
    const { packTree, readTreeInfo } = await import('../../server/releases/pack.js');
    const again = join(suite.dir, 'again.tar.gz');
    await packTree(tree, again, await readTreeInfo(tree), true);
    expect(sha256(await readFile(again))).to.equal(view.sha256);
  });

  it('lists and shows releases; a release with its own Node ships node/ and the digest of that Node (its snapshot is kept)', async () => {
    const tree = await makeTree(join(suite.dir, 'tree-0.3.0'), { version: '0.3.0', arch: 'x64' });
    const add = await cli('release', 'add', tree);
    expect(add.code, add.stderr).to.equal(0);
    expect(add.stdout).to.contain('release 0.3.0 (x64) added').and.to.contain('ships Node 22.11.0');
    const list = await cli('release', 'list', '--json');
    expect(list.code, list.stderr).to.equal(0);
    const all = JSON.parse(list.stdout) as { version: string; arch: string }[];
    expect(all.map((x) => `${x.version}-${x.arch}`)).to.deep.equal(['0.3.0-x64', '0.2.0-arm64']);
    const table = await cli('release', 'list');
    expect(table.stdout)
      .to.match(/^VERSION\s+ARCH/)
      .and.to.contain('0.3.0')
      .and.to.contain('0.2.0');
    const show = await cli('release', 'show', '0.3.0', '--arch', 'x64', '--json');
    expect(show.code, show.stderr).to.equal(0);
    const m = (JSON.parse(show.stdout) as { manifest: ReleaseManifest }).manifest;
    expect(m.node.ships).to.equal(true);
    // The guard keeps sensor-agent.blob only when this digest is the unpacked node/bin/node's.
    expect(m.node.binary_sha256).to.equal(sha256(await readFile(join(tree, 'node', 'bin', 'node'))));
    const names = execFileSync('tar', ['-tzf', join(suite.data, 'releases', '0.3.0-x64', 'artifact.tar.gz')], { encoding: 'utf8' });
    expect(names).to.contain('./node/bin/node');
    const missing = await cli('release', 'show', '9.9.9');
    expect(missing.code).to.equal(2);
    expect(missing.stderr).to.contain('E_NO_RELEASE');
  });

  it('refuses a duplicate, a tree without .build-info.json, and one over 64 MiB, leaving nothing behind', async () => {
    const dup = await cli('release', 'add', join(suite.dir, 'tree-0.2.0'), '--agent-only');
    expect(dup.code).to.equal(2);
    expect(dup.stderr).to.contain('E_RELEASE_EXISTS');
    const bare = await makeTree(join(suite.dir, 'tree-bare'), { version: '0.4.0', info: false });
    const noInfo = await cli('release', 'add', bare);
    expect(noInfo.code).to.equal(2);
    expect(noInfo.stderr).to.contain('E_RELEASE_TREE').and.to.contain('.build-info.json');
    const big = await makeTree(join(suite.dir, 'tree-big'), { version: '0.5.0', payload: 65 * 1024 * 1024 });
    const tooBig = await cli('release', 'add', big, '--agent-only');
    expect(tooBig.code).to.equal(2);
    expect(tooBig.stderr).to.contain('E_RELEASE_TOO_LARGE');
    await rm(big, { recursive: true });
    expect((await readdir(join(suite.data, 'releases'))).sort()).to.deep.equal(['0.2.0-arm64', '0.3.0-x64']);
    const list = JSON.parse((await cli('release', 'list', '--json')).stdout) as unknown[];
    expect(list).to.have.length(2);
  });

  it('adds a release signed elsewhere (--artifact, --manifest); refuses a tampered artifact and a manifest signed by another key', async () => {
    const src = join(suite.data, 'releases', '0.3.0-x64');
    const artifact = join(suite.dir, 'x64.tar.gz');
    const manifestFile = join(suite.dir, 'x64.jws');
    await copyFile(join(src, 'artifact.tar.gz'), artifact);
    await copyFile(join(src, 'manifest.jws'), manifestFile);
    const rm1 = await cli('release', 'remove', '0.3.0');
    expect(rm1.code, rm1.stderr).to.equal(0);
    await stat(src).then(
      () => expect.fail('the release directory is still there'),
      () => undefined,
    );

    const tampered = join(suite.dir, 'tampered.tar.gz');
    const bytes = await readFile(artifact);
    bytes[bytes.length - 100] = (bytes[bytes.length - 100] ?? 0) ^ 0xff;
    await writeFile(tampered, bytes);
    const bad = await cli('release', 'add', '--artifact', tampered, '--manifest', manifestFile);
    expect(bad.code).to.equal(2);
    expect(bad.stderr).to.contain('E_RELEASE_ARTIFACT');

    const other = await generateSigningKey();
    const m = JSON.parse(await readFile(join(suite.data, 'releases', '0.2.0-arm64', 'manifest.json'), 'utf8')) as ReleaseManifest;
    const forged = join(suite.dir, 'forged.jws');
    await writeFile(forged, await signReleaseManifest({ ...m, version: '0.2.1' }, other));
    const unsigned = await cli('release', 'add', '--artifact', join(suite.data, 'releases', '0.2.0-arm64', 'artifact.tar.gz'), '--manifest', forged);
    expect(unsigned.code).to.equal(2);
    expect(unsigned.stderr).to.contain('E_RELEASE_SIGNATURE');

    const ok = await cli('release', 'add', '--artifact', artifact, '--manifest', manifestFile);
    expect(ok.code, ok.stderr).to.equal(0);
    expect(sha256(await readFile(join(src, 'artifact.tar.gz')))).to.equal(sha256(await readFile(artifact)));
    expect((await readdir(join(suite.data, 'releases'))).sort()).to.deep.equal(['0.2.0-arm64', '0.3.0-x64']);
  });

  it('refuses to remove a release while an upgrade command for it is in flight; removes it once answered', async () => {
    const data = await openDataDir(suite.data);
    try {
      const board = await makeSimDevice('rel-board-1');
      await data.storage.devices.add({
        id: board.id,
        userId: 'u1',
        origin: 'jwks',
        signing: toPublicJwk(board.signing),
        encryption: toPublicJwk(board.encryption),
        state: 'provisioned',
      });
      const sender = new CommandSender({ storage: data.storage, keys: data.keys, topicPrefix: data.config.topicPrefix, publish: async () => undefined });
      // Its architecture is not known yet: the release's only build (arm64) is sent (a board of another arch would refuse it).
      const c = await sender.send({ deviceId: board.id, action: 'upgrade', params: { release: '0.2.0', deadline_s: 120 } });
      expect(c.releaseSha256).to.equal(JSON.parse((await cli('release', 'show', '0.2.0', '--json')).stdout)[0].sha256);
      const inUse = await cli('release', 'remove', '0.2.0');
      expect(inUse.code).to.equal(2);
      expect(inUse.stderr).to.contain('E_RELEASE_IN_USE').and.to.contain(board.id);
      const applied: AckClaims = {
        iss: board.id,
        aud: data.keys.serverId,
        iat: Math.floor(Date.now() / 1000),
        jti: 'ack-1',
        ref: c.jti,
        seq: c.seq,
        status: 'applied',
        code: 'OK',
        detail: '',
        result: { version: '0.2.0', previous: '0.1.0' },
      };
      await data.storage.commands.recordAck(board.id, applied, ackEffectsOf(c, applied));
      // The applied upgrade records the running version and the board's architecture.
      const d = await data.storage.devices.require(board.id);
      expect(d.agentVersion).to.equal('0.2.0');
      expect(d.arch).to.equal('arm64');
    } finally {
      await data.storage.close();
    }
    const removed = await cli('release', 'remove', '0.2.0');
    expect(removed.code, removed.stderr).to.equal(0);
    expect(await readdir(join(suite.data, 'releases'))).to.deep.equal(['0.3.0-x64']);
  });

  it('an older data directory without a release key: bundle warns and writes none; release keygen makes one that bundle then copies', async () => {
    await rm(join(suite.data, 'keys', 'release.jwk'));
    await rm(join(suite.data, 'release.jwks'));
    const out1 = join(suite.dir, 'bundle-1');
    const b1 = await cli('bundle', '--device', 'rel-b1', '--user', 'u1', '--out', out1);
    expect(b1.code, b1.stderr).to.equal(0);
    expect(b1.stderr).to.contain('release keygen');
    expect(await readdir(out1)).to.not.include('release.jwks');
    const addNoKey = await cli('release', 'add', join(suite.dir, 'tree-0.2.0'));
    expect(addNoKey.code).to.equal(2);
    expect(addNoKey.stderr).to.contain('E_NO_RELEASE_KEY');

    const offline = join(suite.dir, 'offline', 'release.jwk');
    const kg = await cli('release', 'keygen', '--out', offline);
    expect(kg.code, kg.stderr).to.equal(0);
    expect((await stat(offline)).mode & 0o777).to.equal(0o600);
    const out2 = join(suite.dir, 'bundle-2');
    const b2 = await cli('bundle', '--device', 'rel-b2', '--user', 'u1', '--out', out2);
    expect(b2.code, b2.stderr).to.equal(0);
    expect(await readFile(join(out2, 'release.jwks'), 'utf8')).to.equal(await readFile(join(suite.data, 'release.jwks'), 'utf8'));
    const set = await parseJwkSet(JSON.parse(await readFile(join(out2, 'release.jwks'), 'utf8')), 'sig');
    const priv = JSON.parse(await readFile(offline, 'utf8')) as { kid: string; d?: string };
    expect(set.map((k) => k.kid)).to.deep.equal([priv.kid]);
    expect(JSON.stringify(set)).to.not.contain('"d"');

    // The offline key signs with --key; a readable key file is refused.
    const tree = await makeTree(join(suite.dir, 'tree-0.6.0'), { version: '0.6.0', snapshot: false });
    await chmod(offline, 0o644);
    const loose = await cli('release', 'add', tree, '--agent-only', '--key', offline);
    expect(loose.code).to.equal(2);
    expect(loose.stderr).to.contain('E_KEY_PERMS');
    await chmod(offline, 0o600);
    const signed = await cli('release', 'add', tree, '--agent-only', '--key', offline, '--json');
    expect(signed.code, signed.stderr).to.equal(0);
    const view = JSON.parse(signed.stdout) as { node: { binary_sha256: string | null }; snapshot: boolean };
    expect(view.snapshot).to.equal(false);
    expect(view.node.binary_sha256).to.equal(null);
  });
});
