/**
 * Packing an agent tree (as `provisioning/build-agent` writes it) into a
 * release artifact: `tar` of the tree with sorted names, owner and group 0
 * (numeric), every mtime the tree's build time (.build-info.json `built_at`),
 * gzip-compressed here (zlib: no name or time in the gzip header), so the same
 * tree always packs to the same bytes. With `agentOnly` the tree's `node/` is
 * left out (the release then runs on the board's current Node).
 *
 * What the manifest says of the tree comes from its .build-info.json:
 * version (`agent_version`), arch, node {version, abi}, gpio, snapshot.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { lstat, open, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import {
  CodedError,
  chunkCount,
  isRecord,
  isVersion,
  MAX_RELEASE_ARTIFACT_BYTES,
  RELEASE_ARCHES,
  RELEASE_CHUNK_BYTES,
  type ReleaseArch,
  type ReleaseManifest,
} from '../../protocol/index.js';

/** What the manifest takes from a tree's .build-info.json. */
export interface TreeInfo {
  version: string;
  arch: ReleaseArch;
  node: { version: string; abi: string };
  gpio: 'native' | 'omit';
  snapshot: boolean;
  builtAt: string;
  /** node/bin/node is a regular file in the tree (a `--node system` tree has a link to /usr/bin/node). */
  shipsNode: boolean;
}

const treeError = (tree: string, why: string): CodedError => new CodedError('E_RELEASE_TREE', `${tree}: ${why}`);

/** Reads and checks a tree's .build-info.json (E_RELEASE_TREE when absent or unusable). */
export async function readTreeInfo(tree: string): Promise<TreeInfo> {
  const st = await stat(tree).catch(() => undefined);
  if (!st?.isDirectory()) throw treeError(tree, 'not a directory (an agent tree as build-agent writes it)');
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(join(tree, '.build-info.json'), 'utf8')) as unknown;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw treeError(
      tree,
      code === 'ENOENT' ? 'no .build-info.json: not an agent tree (build it with provisioning/build-agent)' : '.build-info.json is not valid JSON',
    );
  }
  if (!isRecord(raw)) throw treeError(tree, '.build-info.json is not a JSON object');
  if (!isVersion(raw.agent_version)) throw treeError(tree, `.build-info.json agent_version ${JSON.stringify(raw.agent_version)} is not a version x.y.z[-pre]`);
  if (typeof raw.arch !== 'string' || !(RELEASE_ARCHES as readonly string[]).includes(raw.arch))
    throw treeError(tree, `.build-info.json arch ${JSON.stringify(raw.arch)} is not one of ${RELEASE_ARCHES.join(', ')}`);
  const node = raw.node;
  if (!isRecord(node) || typeof node.version !== 'string' || typeof node.abi !== 'string')
    throw treeError(tree, '.build-info.json node must carry version and abi');
  const nodeVersion = node.version.replace(/^v/, '');
  if (raw.gpio !== 'native' && raw.gpio !== 'omit') throw treeError(tree, '.build-info.json gpio must be "native" or "omit"');
  if (typeof raw.built_at !== 'string' || Number.isNaN(Date.parse(raw.built_at))) throw treeError(tree, '.build-info.json built_at must be an ISO 8601 time');
  const snapshot = isRecord(raw.snapshot) && typeof raw.snapshot.path === 'string';
  if (!(await lstat(join(tree, 'sensor-agent.mjs')).catch(() => undefined))?.isFile()) throw treeError(tree, 'no sensor-agent.mjs');
  const nodeBin = await lstat(join(tree, 'node', 'bin', 'node')).catch(() => undefined);
  return {
    version: raw.agent_version,
    arch: raw.arch as ReleaseArch,
    node: { version: nodeVersion, abi: node.abi },
    gpio: raw.gpio,
    snapshot,
    builtAt: raw.built_at,
    shipsNode: nodeBin?.isFile() === true,
  };
}

/** Total size of what unpacking takes: regular files' bytes plus 4 KiB per directory and link. */
async function unpackedBytes(dir: string, skip: (rel: string) => boolean, rel = ''): Promise<number> {
  let total = 4096;
  for (const e of await readdir(join(dir, rel), { withFileTypes: true })) {
    const r = rel === '' ? e.name : `${rel}/${e.name}`;
    if (skip(r)) continue;
    if (e.isDirectory()) total += await unpackedBytes(dir, skip, r);
    else if (e.isFile()) total += (await stat(join(dir, r))).size;
    else total += 4096;
  }
  return total;
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    for await (const chunk of fh.createReadStream()) h.update(chunk as Buffer);
  } finally {
    await fh.close().catch(() => undefined);
  }
  return h.digest('hex');
}

/** Packs `tree` into `out` (artifact.tar.gz). Refuses (E_RELEASE_TOO_LARGE) past MAX_RELEASE_ARTIFACT_BYTES. */
export async function packTree(tree: string, out: string, info: TreeInfo, agentOnly: boolean): Promise<void> {
  const args = [
    '--sort=name',
    '--owner=0',
    '--group=0',
    '--numeric-owner',
    `--mtime=${info.builtAt}`,
    '--format=gnu',
    ...(agentOnly ? ['--exclude=./node'] : []),
    '-cf',
    '-',
    '-C',
    tree,
    '.',
  ];
  const tar = spawn('tar', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  tar.stderr.on('data', (d: Buffer) => {
    if (stderr.length < 4096) stderr += d.toString('utf8');
  });
  const exited = new Promise<number>((resolve, reject) => {
    tar.once('error', reject);
    tar.once('close', (code) => resolve(code ?? 1));
  });
  let written = 0;
  const gzip = createGzip({ level: 9 });
  gzip.on('data', (d: Buffer) => {
    written += d.length;
    if (written > MAX_RELEASE_ARTIFACT_BYTES) gzip.destroy(new CodedError('E_RELEASE_TOO_LARGE', 'too large'));
  });
  try {
    await pipeline(tar.stdout, gzip, createWriteStream(out, { mode: 0o644 }));
  } catch (err) {
    tar.kill('SIGKILL');
    await exited.catch(() => undefined);
    if (err instanceof CodedError && err.code === 'E_RELEASE_TOO_LARGE')
      throw new CodedError(
        'E_RELEASE_TOO_LARGE',
        `the packed release exceeds ${MAX_RELEASE_ARTIFACT_BYTES / 1024 / 1024} MiB (its chunk index must fit one frame)`,
      );
    throw new CodedError('E_PACK', `packing ${tree} failed: ${err instanceof Error ? err.message : String(err)}`);
  }
  const code = await exited.catch((err: unknown) => {
    throw new CodedError('E_PACK', `cannot run tar: ${err instanceof Error ? err.message : String(err)}`);
  });
  if (code !== 0) throw new CodedError('E_PACK', `tar exited ${code}: ${stderr.trim()}`);
}

/**
 * Reads an artifact chunk by chunk (never whole in memory): its size, its
 * SHA-256 and the chunk index (each chunk's 32-byte SHA-256, in order).
 */
export async function digestArtifact(path: string, chunkBytes = RELEASE_CHUNK_BYTES): Promise<{ bytes: number; sha256: string; index: Buffer }> {
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    if (size > MAX_RELEASE_ARTIFACT_BYTES)
      throw new CodedError('E_RELEASE_TOO_LARGE', `${path} has ${size} bytes, above ${MAX_RELEASE_ARTIFACT_BYTES / 1024 / 1024} MiB`);
    if (size === 0) throw new CodedError('E_RELEASE_ARTIFACT', `${path} is empty`);
    const whole = createHash('sha256');
    const count = chunkCount(size, chunkBytes);
    const index = Buffer.alloc(count * 32);
    const buf = Buffer.alloc(chunkBytes);
    for (let n = 0; n < count; n++) {
      const want = Math.min(chunkBytes, size - n * chunkBytes);
      const { bytesRead } = await fh.read(buf, 0, want, n * chunkBytes);
      if (bytesRead !== want) throw new CodedError('E_RELEASE_ARTIFACT', `${path} changed while it was read`);
      const chunk = buf.subarray(0, want);
      whole.update(chunk);
      createHash('sha256')
        .update(chunk)
        .digest()
        .copy(index, n * 32);
    }
    return { bytes: size, sha256: whole.digest('hex'), index };
  } finally {
    await fh.close();
  }
}

/** The manifest of a packed tree (unsigned). */
export async function manifestFor(
  tree: string,
  info: TreeInfo,
  agentOnly: boolean,
  artifact: { bytes: number; sha256: string; index: Buffer },
  now: Date = new Date(),
): Promise<ReleaseManifest> {
  const ships = !agentOnly && info.shipsNode;
  // The installer keeps the snapshot only on a board whose Node binary is the one it was made with.
  const binary = info.snapshot && agentOnly && info.shipsNode ? await sha256File(join(tree, 'node', 'bin', 'node')) : null;
  return {
    format: 1,
    version: info.version,
    arch: info.arch,
    node: { ships, version: info.node.version, abi: info.node.abi, binary_sha256: binary },
    gpio: info.gpio,
    snapshot: info.snapshot,
    artifact: {
      bytes: artifact.bytes,
      sha256: artifact.sha256,
      unpacked_bytes: await unpackedBytes(tree, (rel) => agentOnly && (rel === 'node' || rel.startsWith('node/'))),
    },
    chunks: { bytes: RELEASE_CHUNK_BYTES, count: artifact.index.length / 32, index_sha256: createHash('sha256').update(artifact.index).digest('hex') },
    created_at: now.toISOString(),
  };
}
