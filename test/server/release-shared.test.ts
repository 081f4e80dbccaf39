/**
 * Agent releases on several machines sharing one PostgreSQL registry: machine
 * A runs `release add` (files in A's data directory and in the registry);
 * machine B (its own data directory, joined with A's server keys) gets a
 * board's fetch for it (a shared subscription may hand any serve the request).
 * B writes DATA/releases/VERSION-ARCH from the registry's files, verified,
 * once for concurrent fetches, and serves chunks identical to A's files; a
 * stale directory of the same name is replaced. Files tampered with in the
 * database are refused (nothing written), files missing are refused; each
 * logged once per release.
 */
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { encodeFetch, fetchTopic, parseChunkFrame, type ChunkFrame } from '../../protocol/index.js';
import { createLogger } from '../../lib/log.js';
import { ChunkServer, type ChunkResult } from '../../server/chunk-server.js';
import { initDataDir, openDataDir, type OpenedData } from '../../server/data-dir.js';
import { loadReleaseKey } from '../../server/keys/release-key.js';
import { addReleaseFromTree, removeRelease } from '../../server/releases/store.js';
import { exportServer, writeJoinedDataDir } from '../../server/keys/server-join.js';
import { NO_POSTGRES, postgresBin, postgresRequired, startPgCluster, type PgCluster } from '../helpers/pg-cluster.js';
import { addDevice, sendCommand } from '../storage/fixtures.js';
import { makeTree } from './release-tree.js';

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const FILES = ['artifact.tar.gz', 'index.bin', 'manifest.json', 'manifest.jws'];

describe('server: release files shared by every serve on one PostgreSQL registry', function () {
  this.timeout(120_000);
  let cluster: PgCluster | undefined;
  let dir: string;
  let url: string;
  let dataA: string;
  let dataB: string;
  let a: OpenedData;
  let b: OpenedData;
  const lines: string[] = [];
  const frames: { topic: string; frame: ChunkFrame }[] = [];
  let chunksB: ChunkServer;

  before(async function () {
    if (!postgresBin()) {
      if (postgresRequired()) throw new Error(NO_POSTGRES);
      return this.skip();
    }
    cluster = await startPgCluster();
    url = await cluster.createDatabase();
    dir = await mkdtemp(join(tmpdir(), 'release-shared-'));
    dataA = join(dir, 'a');
    dataB = join(dir, 'b');
    await initDataDir(dataA, { registry: url });
    await writeJoinedDataDir(dataB, await exportServer(dataA), {});
    a = await openDataDir(dataA);
    b = await openDataDir(dataB);
    expect(b.storage.info.location).to.equal(a.storage.info.location);
    await addDevice(b.storage, 'board-1');
    chunksB = new ChunkServer({
      storage: b.storage,
      dataDir: dataB,
      topicPrefix: 'provision',
      log: createLogger({ level: 'info', write: (line) => lines.push(line) }),
      rate: { burst: 1000, perSecond: 1000 },
      publish: async (topic, payload) => {
        frames.push({ topic, frame: parseChunkFrame(payload) });
      },
    });
  });

  after(async () => {
    chunksB?.close();
    await a?.storage.close();
    await b?.storage.close();
    await cluster?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** `release add` on A, and an upgrade command for it in flight to board-1. */
  async function addOnA(version: string): Promise<{ sha256: string; id: number; count: number; dirA: string }> {
    const tree = await makeTree(join(dir, `tree-${version}`), { version, payload: 300_000 });
    const added = await addReleaseFromTree(a.storage, dataA, tree, { agentOnly: true, key: await loadReleaseKey(dataA) });
    const c = await sendCommand(b.storage, 'board-1', { action: 'upgrade', releaseSha256: added.record.sha256 });
    await b.storage.commands.markSent(c.jti);
    return { sha256: added.record.sha256, id: added.record.id, count: added.manifest.chunks.count, dirA: added.record.dir };
  }

  const fetch = (req: Parameters<typeof encodeFetch>[0]): Promise<ChunkResult> => chunksB.handle(fetchTopic('provision', 'board-1'), encodeFetch(req));
  const logged = (event: string): string[] => lines.filter((l) => l.includes(event));
  const sql = async (text: string, params: unknown[] = []): Promise<void> => {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      await client.query(text, params);
    } finally {
      await client.end();
    }
  };
  const leftovers = async (): Promise<string[]> => (await readdir(join(dataB, 'releases')).catch(() => [] as string[])).filter((n) => n.startsWith('.'));

  it('B, without the files, writes the release directory from the registry (verified, once for concurrent fetches) and serves the same chunks as A has', async () => {
    const r = await addOnA('0.5.0');
    const dirB = join(dataB, 'releases', '0.5.0-arm64');
    expect(r.dirA).to.equal(join(dataA, 'releases', '0.5.0-arm64'));
    // A stale directory of the same name on B (a removed release's): replaced, not served.
    await mkdir(dirB, { recursive: true });
    await writeFile(join(dirB, 'manifest.jws'), 'an older release\n');
    await writeFile(join(dirB, 'artifact.tar.gz'), 'old');

    const results = await Promise.all([
      fetch({ v: 1, sha256: r.sha256, index: true }),
      fetch({ v: 1, sha256: r.sha256, from: 0, count: 2 }),
      fetch({ v: 1, sha256: r.sha256, from: 2, count: 16 }),
    ]);
    for (const x of results) expect(x).to.deep.include({ kind: 'served', deviceId: 'board-1' });
    expect(logged('release.materialised'), 'one materialisation for three concurrent fetches').to.have.length(1);
    expect(logged('release.files_')).to.deep.equal([]);

    // The directory on B: the same four files as A's, byte for byte, readable by others (0644).
    expect((await readdir(dirB)).sort()).to.deep.equal(FILES);
    for (const name of FILES) {
      expect((await readFile(join(dirB, name))).equals(await readFile(join(r.dirA, name))), name).to.equal(true);
      expect((await stat(join(dirB, name))).mode & 0o777, name).to.equal(0o644);
    }
    expect(await leftovers()).to.deep.equal([]);

    // The frames B sent: A's index, and chunks that reassemble A's artifact.
    const index = frames.find((f) => f.frame.kind === 'index')?.frame;
    expect(index?.data.equals(await readFile(join(r.dirA, 'index.bin')))).to.equal(true);
    expect(r.count).to.be.within(3, 18);
    const all = frames.filter((f) => f.frame.kind === 'chunk').map((f) => f.frame);
    all.sort((x, y) => x.number - y.number);
    expect(all.map((c) => c.number)).to.deep.equal(Array.from({ length: r.count }, (_, i) => i));
    const artifact = Buffer.concat(all.map((c) => c.data));
    expect(sha256(artifact)).to.equal(r.sha256);
    expect(artifact.equals(await readFile(join(r.dirA, 'artifact.tar.gz')))).to.equal(true);
    for (const f of frames) expect(f.topic).to.equal('provision/board-1/chunk');

    // Later fetches use the directory: no second materialisation.
    expect(await fetch({ v: 1, sha256: r.sha256, index: true })).to.deep.include({ kind: 'served' });
    expect(logged('release.materialised')).to.have.length(1);
  });

  it('files tampered with in the registry are refused and nothing is written; files missing are refused; each logged once', async () => {
    const tampered = await addOnA('0.6.0');
    // One byte of the artifact changed in the database (the row and manifest untouched).
    await sql("UPDATE release_files SET bytes = overlay(bytes PLACING '\\x00'::bytea FROM 1000 FOR 1) WHERE release_id = $1 AND name = 'artifact.tar.gz'", [
      tampered.id,
    ]);
    expect(await fetch({ v: 1, sha256: tampered.sha256, index: true })).to.deep.include({ kind: 'refused', why: 'no-files' });
    expect(await fetch({ v: 1, sha256: tampered.sha256, from: 0, count: 1 })).to.deep.include({ kind: 'refused', why: 'no-files' });
    await stat(join(dataB, 'releases', '0.6.0-arm64')).then(
      () => expect.fail('the tampered release was written on B'),
      (err: NodeJS.ErrnoException) => expect(err.code).to.equal('ENOENT'),
    );
    expect(await leftovers()).to.deep.equal([]);
    const invalid = logged('release.files_invalid');
    expect(invalid).to.have.length(1);
    expect(invalid[0]).to.contain("does not have the manifest's SHA-256").and.contain('0.6.0');

    // An index that is not the artifact's: refused too.
    const badIndex = await addOnA('0.6.1');
    await sql("UPDATE release_files SET bytes = overlay(bytes PLACING '\\x00'::bytea FROM 1 FOR 1) WHERE release_id = $1 AND name = 'index.bin'", [
      badIndex.id,
    ]);
    expect(await fetch({ v: 1, sha256: badIndex.sha256, index: true })).to.deep.include({ kind: 'refused', why: 'no-files' });
    expect(logged('release.files_invalid').filter((l) => l.includes('0.6.1'))).to.have.length(1);
    expect(logged('release.files_invalid').at(-1)).to.contain('index.bin');

    // No files in the registry at all (say, deleted): refused, logged once with the reason.
    const missing = await addOnA('0.7.0');
    await sql('DELETE FROM release_files WHERE release_id = $1', [missing.id]);
    expect(await fetch({ v: 1, sha256: missing.sha256, index: true })).to.deep.include({ kind: 'refused', why: 'no-files' });
    expect(await fetch({ v: 1, sha256: missing.sha256, index: true })).to.deep.include({ kind: 'refused', why: 'no-files' });
    const gone = logged('release.files_missing');
    expect(gone).to.have.length(1);
    expect(gone[0]).to.contain('0.7.0').and.contain('the registry keeps no files for it');
    expect(chunksB.counts['no-files']).to.equal(5);
    expect(logged('release.materialised')).to.have.length(1);
  });

  it('release remove drops the files from the registry and the directory from this data directory', async () => {
    const r = await addOnA('0.8.0');
    expect(await fetch({ v: 1, sha256: r.sha256, index: true })).to.deep.include({ kind: 'served' });
    // Answered: no longer in use.
    await sql('UPDATE commands SET ack_status = $1 WHERE release_sha256 = $2', ['applied', r.sha256]);
    const rec = await b.storage.releases.require('0.8.0');
    await removeRelease(b.storage, rec, dataB);
    expect(await a.storage.releases.files(r.sha256)).to.equal(undefined);
    await stat(join(dataB, 'releases', '0.8.0-arm64')).then(
      () => expect.fail('still on B'),
      (err: NodeJS.ErrnoException) => expect(err.code).to.equal('ENOENT'),
    );
  });
});
