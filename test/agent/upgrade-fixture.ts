/**
 * The server's side of an upgrade for agent tests: a real tar.gz artifact,
 * its chunk index and a manifest signed with a release key
 * (protocol signReleaseManifest), and a responder that answers the agent's
 * fetch requests with chunk frames over the broker (it can tamper with a
 * chunk, or stop answering after some chunks). Plus the board side: the
 * pinned release keys next to trust.jwks, an installer file, the config keys.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { MqttClient } from 'mqtt';
import {
  chunkCount,
  chunkTopic,
  encodeChunkFrame,
  parseFetch,
  RELEASE_CHUNK_BYTES,
  sha256Hex,
  signReleaseManifest,
  toJwkSet,
  toPublicJwk,
  type FetchRequest,
  type PrivateJwk,
  type ReleaseArch,
  type ReleaseManifest,
} from '../../protocol/index.js';
import { createHash } from 'node:crypto';
import { boardArch } from '../../agent/upgrade/checks.js';
import { PREFIX, type DeviceFiles } from './agent-fixture.js';

const run = promisify(execFile);

export interface Release {
  version: string;
  artifact: Buffer;
  index: Buffer;
  manifest: ReleaseManifest;
  jws: string;
}

/** A real agent-tree-like tar.gz of about `bytes` bytes (random content, so it does not compress). */
export async function makeArtifact(bytes: number): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), 'release-tree-'));
  try {
    await mkdir(join(dir, 'tree'));
    await writeFile(join(dir, 'tree', 'sensor-agent.mjs'), '// test release\n');
    await writeFile(join(dir, 'tree', 'payload.bin'), randomBytes(bytes));
    await run('tar', ['-czf', join(dir, 'a.tar.gz'), '-C', join(dir, 'tree'), '.']);
    return await readFile(join(dir, 'a.tar.gz'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export function chunkIndexOf(artifact: Buffer, chunkBytes = RELEASE_CHUNK_BYTES): Buffer {
  const parts: Buffer[] = [];
  for (let off = 0; off < artifact.length; off += chunkBytes)
    parts.push(
      createHash('sha256')
        .update(artifact.subarray(off, off + chunkBytes))
        .digest(),
    );
  return Buffer.concat(parts);
}

export interface ReleaseOptions {
  version: string;
  artifact: Buffer;
  arch?: ReleaseArch;
  unpackedBytes?: number;
  node?: Partial<ReleaseManifest['node']>;
}

export async function makeRelease(key: PrivateJwk, o: ReleaseOptions): Promise<Release> {
  const index = chunkIndexOf(o.artifact);
  const manifest: ReleaseManifest = {
    format: 1,
    version: o.version,
    arch: o.arch ?? boardArch() ?? 'x64',
    node: { ships: true, version: process.versions.node, abi: process.versions.modules, binary_sha256: null, ...o.node },
    gpio: 'omit',
    snapshot: false,
    artifact: { bytes: o.artifact.length, sha256: sha256Hex(o.artifact), unpacked_bytes: o.unpackedBytes ?? o.artifact.length * 2 },
    chunks: { bytes: RELEASE_CHUNK_BYTES, count: chunkCount(o.artifact.length), index_sha256: sha256Hex(index) },
    created_at: new Date().toISOString(),
  };
  return { version: o.version, artifact: o.artifact, index, manifest, jws: await signReleaseManifest(manifest, key) };
}

/** Answers fetch requests (PREFIX/+/fetch) with frames on the device's chunk topic. */
export class ReleaseResponder {
  readonly requests: { deviceId: string; req: FetchRequest }[] = [];
  /** Chunk numbers served with one byte flipped. */
  readonly tamper = new Set<number>();
  /** Serve no chunk numbered at or above this (the download stalls there). */
  stopAt = Infinity;
  readonly served = new Map<number, number>();
  readonly #releases = new Map<string, Release>();

  constructor(readonly client: MqttClient) {}

  add(r: Release): void {
    this.#releases.set(r.manifest.artifact.sha256, r);
  }

  async start(): Promise<void> {
    this.client.on('message', (topic, payload) => {
      const [, deviceId, kind] = topic.split('/');
      if (kind !== 'fetch' || !deviceId) return;
      void this.#answer(deviceId, payload);
    });
    await this.client.subscribeAsync(`${PREFIX}/+/fetch`, { qos: 0 });
  }

  async #answer(deviceId: string, payload: Buffer): Promise<void> {
    const req = parseFetch(payload);
    this.requests.push({ deviceId, req });
    const r = this.#releases.get(req.sha256);
    if (!r) return;
    const topic = chunkTopic(PREFIX, deviceId);
    if ('index' in req) {
      await this.client.publishAsync(topic, encodeChunkFrame({ sha256: req.sha256, kind: 'index', number: 0, data: r.index }), { qos: 0 });
      return;
    }
    const bytes = r.manifest.chunks.bytes;
    for (let n = req.from; n < Math.min(req.from + req.count, r.manifest.chunks.count); n++) {
      if (n >= this.stopAt) return;
      const data = Buffer.from(r.artifact.subarray(n * bytes, (n + 1) * bytes));
      if (this.tamper.has(n)) data[0] = (data[0] ?? 0) ^ 0xff;
      this.served.set(n, (this.served.get(n) ?? 0) + 1);
      await this.client.publishAsync(topic, encodeChunkFrame({ sha256: req.sha256, kind: 'chunk', number: n, data }), { qos: 0 });
    }
  }
}

/** The board side: release.jwks next to trust.jwks, an installer (a file that does nothing), the upgrade config. */
export async function equipBoard(
  files: DeviceFiles,
  releaseKeys: PrivateJwk[],
  o: { installer?: boolean; keys?: boolean } = {},
): Promise<{ installer: string; installRoot: string; upgradeDir: string }> {
  const installer = join(files.dir, 'upgrade-guard');
  const installRoot = join(files.dir, 'opt');
  await mkdir(installRoot, { recursive: true });
  if (o.keys !== false) await writeFile(join(files.dir, 'release.jwks'), JSON.stringify(toJwkSet(releaseKeys.map((k) => toPublicJwk(k)))), { mode: 0o640 });
  if (o.installer !== false) {
    await writeFile(installer, '#!/bin/sh\nexit 0\n');
    await chmod(installer, 0o755);
  }
  return { installer, installRoot, upgradeDir: join(files.dir, 'upgrade') };
}

/** The config's `upgrade` section for a device made by makeDevice (dir = its directory). */
export function upgradeConfig(dir: string, installRoot = join(dir, 'opt')): Record<string, unknown> {
  return { upgrade: { installer_path: join(dir, 'upgrade-guard'), install_root: installRoot } };
}

/** Every path under `dir` with its type and size (what "nothing changed on disk" compares). */
export async function listing(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string, rel: string): Promise<void> => {
    for (const e of (await readdir(d)).sort()) {
      const p = join(d, e);
      const st = await lstat(p);
      out.push(`${rel}${e}${st.isDirectory() ? '/' : ` ${st.size}`}`);
      if (st.isDirectory()) await walk(p, `${rel}${e}/`);
    }
  };
  await walk(dir, '');
  return out;
}
