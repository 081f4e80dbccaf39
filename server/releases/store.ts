/**
 * Releases in the data directory: DATA/releases/VERSION-ARCH/ holding
 * `artifact.tar.gz`, `index.bin` (the chunk index), `manifest.jws` (signed)
 * and `manifest.json` (readable), with a row in the registry (server/storage/sqlite/releases.ts, postgres/releases.ts).
 * A registry shared by several machines (PostgreSQL) also keeps the four
 * files, stored in the row's transaction: another machine's serve writes the
 * directory from them when a board fetches (server/releases/materialise.ts).
 * A release is written into a temporary directory and renamed into place
 * before it is recorded: a crash leaves no half release behind a row.
 */
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, lstat, mkdir, readFile, rename, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CodedError, KeyRing, verifyReleaseManifest, signReleaseManifest, type PrivateJwk, type ReleaseManifest } from '../../protocol/index.js';
import { fsyncDirectory, writeFileAtomic } from '../../lib/durable-file.js';
import { ensurePrivateDir } from '../../lib/fs.js';
import type { ReleaseRecord } from '../storage/records.js';
import type { ReleaseFile, Storage } from '../storage/types.js';
import { readReleaseJwks } from '../keys/release-key.js';
import { digestArtifact, manifestFor, packTree, readTreeInfo } from './pack.js';

export const ARTIFACT_FILE = 'artifact.tar.gz';
export const INDEX_FILE = 'index.bin';
export const MANIFEST_JWS_FILE = 'manifest.jws';
export const MANIFEST_JSON_FILE = 'manifest.json';

export function releasesDir(dataDir: string): string {
  return join(resolve(dataDir), 'releases');
}

/** The pinned release keys of the data directory (release.jwks): E_NO_RELEASE_KEY when there is none. */
export async function releaseKeyRing(dataDir: string): Promise<KeyRing> {
  const keys = await readReleaseJwks(dataDir);
  if (keys === undefined || keys.length === 0)
    throw new CodedError(
      'E_NO_RELEASE_KEY',
      `no release.jwks in ${resolve(dataDir)}; make a release key with: provision-server release keygen --data ${dataDir}`,
    );
  return KeyRing.create(keys);
}

/** The files of a release directory, in this order. */
export const RELEASE_FILES: readonly string[] = [ARTIFACT_FILE, INDEX_FILE, MANIFEST_JWS_FILE, MANIFEST_JSON_FILE];

/** The directory of release VERSION-ARCH in a data directory. */
export function releaseDirOf(dataDir: string, r: { version: string; arch: string }): string {
  return join(releasesDir(dataDir), `${r.version}-${r.arch}`);
}

/** A release directory's files, read whole (the artifact is at most 64 MiB): what a registry shared by several machines stores. */
export async function readReleaseFiles(dir: string): Promise<ReleaseFile[]> {
  const out: ReleaseFile[] = [];
  for (const name of RELEASE_FILES) out.push({ name, bytes: await readFile(join(dir, name)) });
  return out;
}

interface Staged {
  tmp: string;
  manifest: ReleaseManifest;
  jws: string;
}

async function install(storage: Storage, dataDir: string, staged: Staged): Promise<ReleaseRecord> {
  const store = storage.releases;
  const m = staged.manifest;
  const final = releaseDirOf(dataDir, m);
  let files: ReleaseFile[] | undefined;
  try {
    if (await store.get(m.version, m.arch)) throw new CodedError('E_RELEASE_EXISTS', `release ${m.version} for ${m.arch} already exists; remove it first`);
    await writeFileAtomic(join(staged.tmp, MANIFEST_JWS_FILE), `${staged.jws}\n`, { mode: 0o644 });
    await writeFileAtomic(join(staged.tmp, MANIFEST_JSON_FILE), `${JSON.stringify(m, null, 2)}\n`, { mode: 0o644 });
    // A registry shared by several machines keeps the files too, stored with the row (see releaseFilesOf).
    if (store.keepsFiles) files = await readReleaseFiles(staged.tmp);
    // A directory left by a release removed earlier (or a crash after the rename) is replaced.
    await rm(final, { recursive: true, force: true });
    await rename(staged.tmp, final);
    await fsyncDirectory(releasesDir(dataDir));
  } catch (err) {
    await rm(staged.tmp, { recursive: true, force: true });
    throw err;
  }
  try {
    return await store.add(m, staged.jws, final, files);
  } catch (err) {
    await rm(final, { recursive: true, force: true });
    throw err;
  }
}

async function stagingDir(dataDir: string): Promise<string> {
  const root = releasesDir(dataDir);
  await ensurePrivateDir(root);
  const tmp = join(root, `.add-${randomBytes(6).toString('hex')}`);
  await mkdir(tmp, { mode: 0o755 });
  return tmp;
}

/**
 * `release add TREE`: packs the tree, builds the chunk index and the manifest,
 * signs it with `key`, checks the signature against release.jwks (a key the
 * boards do not pin would make a release every board refuses), stores it.
 */
export async function addReleaseFromTree(
  storage: Storage,
  dataDir: string,
  tree: string,
  options: { agentOnly: boolean; key: PrivateJwk; now?: Date },
): Promise<{ record: ReleaseRecord; manifest: ReleaseManifest }> {
  const ring = await releaseKeyRing(dataDir);
  const info = await readTreeInfo(tree);
  if (!options.agentOnly && !info.shipsNode && (await lstat(join(tree, 'node')).catch(() => undefined)) !== undefined)
    throw new CodedError('E_RELEASE_TREE', `${tree}: node/bin/node is not a regular file (a --node system tree): pass --agent-only`);
  if (!ring.get(options.key.kid))
    throw new CodedError(
      'E_RELEASE_KEY',
      `the release key ${options.key.kid} is not in ${join(resolve(dataDir), 'release.jwks')}: boards pin that set and would refuse this release`,
    );
  if (await storage.releases.get(info.version, info.arch))
    throw new CodedError('E_RELEASE_EXISTS', `release ${info.version} for ${info.arch} already exists; remove it first`);
  const tmp = await stagingDir(dataDir);
  try {
    const artifact = join(tmp, ARTIFACT_FILE);
    await packTree(tree, artifact, info, options.agentOnly);
    const digest = await digestArtifact(artifact);
    await writeFileAtomic(join(tmp, INDEX_FILE), digest.index, { mode: 0o644 });
    const manifest = await manifestFor(tree, info, options.agentOnly, digest, options.now);
    const jws = await signReleaseManifest(manifest, options.key);
    await verifyReleaseManifest(jws, ring);
    return { record: await install(storage, dataDir, { tmp, manifest, jws }), manifest };
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

/**
 * `release add --artifact FILE --manifest FILE`: a release signed elsewhere.
 * The manifest must verify with release.jwks and describe the artifact
 * exactly (size, SHA-256, and the chunk index its chunks make).
 */
export async function addReleaseFromFiles(
  storage: Storage,
  dataDir: string,
  artifactPath: string,
  manifestPath: string,
): Promise<{ record: ReleaseRecord; manifest: ReleaseManifest }> {
  const ring = await releaseKeyRing(dataDir);
  let jws: string;
  try {
    jws = (await readFile(manifestPath, 'utf8')).trim();
  } catch (err) {
    throw new CodedError('E_NO_FILE', `cannot read ${manifestPath}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let manifest: ReleaseManifest;
  try {
    ({ manifest } = await verifyReleaseManifest(jws, ring));
  } catch (err) {
    throw new CodedError(
      'E_RELEASE_SIGNATURE',
      `${manifestPath} is not a release manifest signed by a key in release.jwks: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
  const st = await lstat(artifactPath).catch(() => undefined);
  if (!st?.isFile()) throw new CodedError('E_NO_FILE', `${artifactPath} is not a regular file`);
  const digest = await digestArtifact(artifactPath, manifest.chunks.bytes);
  if (digest.bytes !== manifest.artifact.bytes || digest.sha256 !== manifest.artifact.sha256)
    throw new CodedError('E_RELEASE_ARTIFACT', `${artifactPath} is not the artifact the manifest signs (size or SHA-256 differ)`);
  if (createHash('sha256').update(digest.index).digest('hex') !== manifest.chunks.index_sha256)
    throw new CodedError('E_RELEASE_ARTIFACT', `the chunks of ${artifactPath} do not match the manifest's chunk index`);
  if (await storage.releases.get(manifest.version, manifest.arch))
    throw new CodedError('E_RELEASE_EXISTS', `release ${manifest.version} for ${manifest.arch} already exists; remove it first`);
  const tmp = await stagingDir(dataDir);
  try {
    await copyFile(artifactPath, join(tmp, ARTIFACT_FILE));
    const again = await digestArtifact(join(tmp, ARTIFACT_FILE), manifest.chunks.bytes);
    if (again.sha256 !== manifest.artifact.sha256) throw new CodedError('E_RELEASE_ARTIFACT', `${artifactPath} changed while it was copied`);
    await writeFileAtomic(join(tmp, INDEX_FILE), again.index, { mode: 0o644 });
    return { record: await install(storage, dataDir, { tmp, manifest, jws }), manifest };
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

/**
 * `release remove`: refused (E_RELEASE_IN_USE) while a rollout or an in-flight command uses it; then its files are
 * deleted (the registry's copy with the row; the directory the row names, and this data directory's copy). Copies
 * other machines wrote stay on their disks until a release of the same version and arch replaces them.
 */
export async function removeRelease(storage: Storage, r: ReleaseRecord, dataDir?: string): Promise<void> {
  await storage.releases.markRemoved(r);
  await rm(r.dir, { recursive: true, force: true });
  if (dataDir !== undefined) await rm(releaseDirOf(dataDir, r), { recursive: true, force: true });
}

/** A release's manifest as JSON (what manifest.jws signs), from the registry row. */
export function manifestOf(r: ReleaseRecord): ReleaseManifest {
  const payload = r.manifest.split('.')[1] ?? '';
  return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as ReleaseManifest;
}
