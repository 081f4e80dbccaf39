/**
 * Agent releases: the manifest that says what a release is, signed by the
 * release key (never by the server's command key; docs/DESIGN.md "Releases").
 * The manifest travels inside a sealed `upgrade` command; the artifact it
 * describes travels in chunks (transfer.ts) whose digests the manifest signs
 * through the chunk index: the concatenation of every chunk's 32-byte SHA-256,
 * whose own SHA-256 is `chunks.index_sha256`.
 */
import { createHash } from 'node:crypto';
import jose from 'node-jose';
import { parseJwsHeader, toCompactText } from './compact.js';
import { ProtocolError } from './errors.js';
import { isRecord } from './guards.js';
import { asJoseKey, type KeyRing } from './keyring.js';
import { assertJosePatched } from './jose-patch.js';
import { SIGNING_ALG, type PrivateJwk } from './keys.js';
import { verifyJws } from './open.js';

export const RELEASE_MANIFEST_TYPE = 'sensor-agent-release+jws';
export const RELEASE_ARCHES = ['arm64', 'armv7', 'x64'] as const;
export type ReleaseArch = (typeof RELEASE_ARCHES)[number];
/** Bytes of every chunk but the last: a chunk frame (header + chunk) stays under the 64 KiB message cap. */
export const RELEASE_CHUNK_BYTES = 61_440;
/** Largest artifact: its chunk index (32 bytes a chunk) always fits one frame. */
export const MAX_RELEASE_ARTIFACT_BYTES = 64 * 1024 * 1024;
/** Largest signed manifest accepted (it rides in a command, itself capped at 64 KiB). */
export const MAX_RELEASE_MANIFEST_BYTES = 8 * 1024;
const MAX_UNPACKED_BYTES = 1024 * 1024 * 1024;
const HEX64 = /^[0-9a-f]{64}$/;
const VERSION = /^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$/;
const NODE_VERSION = /^\d{1,3}\.\d{1,3}\.\d{1,3}$/;
const NODE_ABI = /^\d{1,4}$/;

export interface ReleaseNode {
  /** The artifact carries `node/` (its own Node.js). */
  ships: boolean;
  /** The Node version the release was built for (shipped, or required of the board when not shipped). */
  version: string;
  /** NODE_MODULE_VERSION of that Node (process.versions.modules). */
  abi: string;
  /** SHA-256 (hex) of the Node binary the release's V8 snapshot was made with; null when it has no snapshot. */
  binary_sha256: string | null;
}

export interface ReleaseManifest {
  format: 1;
  /** Semantic version x.y.z[-pre]. */
  version: string;
  arch: ReleaseArch;
  node: ReleaseNode;
  gpio: 'native' | 'omit';
  /** The tree has a V8 startup snapshot (sensor-agent.blob + snapshot.env). */
  snapshot: boolean;
  artifact: { bytes: number; sha256: string; unpacked_bytes: number };
  chunks: { bytes: number; count: number; index_sha256: string };
  /** ISO 8601 time of signing. */
  created_at: string;
}

export function isVersion(value: unknown): value is string {
  return typeof value === 'string' && value.length <= 64 && VERSION.test(value);
}

/** Semantic-version precedence (semver.org §11): -1 when a < b, 0 when equal, 1 when a > b. Throws on a non-version. */
export function compareVersions(a: string, b: string): -1 | 0 | 1 {
  const ma = VERSION.exec(a);
  const mb = VERSION.exec(b);
  if (!ma || !mb) throw new ProtocolError('E_PARAMS', `"${!ma ? a : b}" is not a version x.y.z[-pre]`);
  for (let i = 1; i <= 3; i++) {
    const d = Number(ma[i]) - Number(mb[i]);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  const pa = ma[4];
  const pb = mb[4];
  if (pa === undefined || pb === undefined) return pa === pb ? 0 : pa === undefined ? 1 : -1;
  const xa = pa.split('.');
  const xb = pb.split('.');
  for (let i = 0; i < Math.max(xa.length, xb.length); i++) {
    const ia = xa[i];
    const ib = xb[i];
    if (ia === undefined) return -1;
    if (ib === undefined) return 1;
    const na = /^\d+$/.test(ia);
    const nb = /^\d+$/.test(ib);
    if (na && nb) {
      const d = Number(ia) - Number(ib);
      if (d !== 0) return d < 0 ? -1 : 1;
    } else if (na !== nb) return na ? -1 : 1;
    else if (ia !== ib) return ia < ib ? -1 : 1;
  }
  return 0;
}

/** SHA-256 (hex) of one chunk, or of a chunk index. */
export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** How many chunks an artifact of `bytes` bytes has. */
export function chunkCount(bytes: number, chunkBytes = RELEASE_CHUNK_BYTES): number {
  return Math.ceil(bytes / chunkBytes);
}

/** The chunk index's entry for chunk `n`: its 32-byte SHA-256. */
export function chunkDigestAt(index: Uint8Array, n: number): Buffer {
  if (!Number.isSafeInteger(n) || n < 0 || (n + 1) * 32 > index.byteLength) throw new ProtocolError('E_PARAMS', `chunk ${n} is not in the index`);
  return Buffer.from(index.buffer, index.byteOffset + n * 32, 32);
}

/** True when `chunk` is chunk `n` of the index (its SHA-256 matches the signed entry). */
export function chunkMatches(index: Uint8Array, n: number, chunk: Uint8Array): boolean {
  return createHash('sha256').update(chunk).digest().equals(chunkDigestAt(index, n));
}

/** Checks a chunk index (fetched separately) against the manifest before any chunk is trusted. */
export function checkChunkIndex(manifest: ReleaseManifest, index: Uint8Array): void {
  if (index.byteLength !== manifest.chunks.count * 32) {
    throw new ProtocolError('E_MALFORMED', `chunk index of ${index.byteLength} bytes; the manifest says ${manifest.chunks.count} chunks`);
  }
  if (sha256Hex(index) !== manifest.chunks.index_sha256) throw new ProtocolError('E_SIGNATURE', 'chunk index does not match the signed manifest');
}

/** Strict schema check of a manifest's payload: every member known and in range. */
export function validateReleaseManifest(value: unknown): ReleaseManifest {
  const fail = (why: string): ProtocolError => new ProtocolError('E_PARAMS', `release manifest: ${why}`);
  const only = (o: Record<string, unknown>, keys: string[], where: string): void => {
    for (const k of Object.keys(o)) if (!keys.includes(k)) throw fail(`${where}${k} is not a known member`);
    for (const k of keys) if (!(k in o)) throw fail(`${where}${k} is missing`);
  };
  const int = (v: unknown, min: number, max: number, what: string): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw fail(`${what} must be an integer from ${min} to ${max}`);
    return v;
  };
  const hex = (v: unknown, what: string): string => {
    if (typeof v !== 'string' || !HEX64.test(v)) throw fail(`${what} must be 64 lower-case hex digits`);
    return v;
  };
  if (!isRecord(value)) throw fail('must be a JSON object');
  only(value, ['format', 'version', 'arch', 'node', 'gpio', 'snapshot', 'artifact', 'chunks', 'created_at'], '');
  if (value.format !== 1) throw fail(`format ${JSON.stringify(value.format)} is not 1`);
  if (!isVersion(value.version)) throw fail('version must be x.y.z[-pre]');
  if (typeof value.arch !== 'string' || !(RELEASE_ARCHES as readonly string[]).includes(value.arch))
    throw fail(`arch must be one of ${RELEASE_ARCHES.join(', ')}`);
  const node = value.node;
  if (!isRecord(node)) throw fail('node must be an object');
  only(node, ['ships', 'version', 'abi', 'binary_sha256'], 'node.');
  if (typeof node.ships !== 'boolean') throw fail('node.ships must be true or false');
  if (typeof node.version !== 'string' || !NODE_VERSION.test(node.version)) throw fail('node.version must be x.y.z');
  if (typeof node.abi !== 'string' || !NODE_ABI.test(node.abi)) throw fail('node.abi must be a NODE_MODULE_VERSION like "115"');
  const binary = node.binary_sha256 === null ? null : hex(node.binary_sha256, 'node.binary_sha256');
  if (value.gpio !== 'native' && value.gpio !== 'omit') throw fail('gpio must be "native" or "omit"');
  if (typeof value.snapshot !== 'boolean') throw fail('snapshot must be true or false');
  const artifact = value.artifact;
  if (!isRecord(artifact)) throw fail('artifact must be an object');
  only(artifact, ['bytes', 'sha256', 'unpacked_bytes'], 'artifact.');
  const bytes = int(artifact.bytes, 1, MAX_RELEASE_ARTIFACT_BYTES, 'artifact.bytes');
  const chunks = value.chunks;
  if (!isRecord(chunks)) throw fail('chunks must be an object');
  only(chunks, ['bytes', 'count', 'index_sha256'], 'chunks.');
  const chunkBytes = int(chunks.bytes, 1024, RELEASE_CHUNK_BYTES, 'chunks.bytes');
  const count = int(chunks.count, 1, chunkCount(MAX_RELEASE_ARTIFACT_BYTES, 1024), 'chunks.count');
  if (count !== chunkCount(bytes, chunkBytes)) throw fail(`chunks.count ${count} does not match ${bytes} bytes in chunks of ${chunkBytes}`);
  if (typeof value.created_at !== 'string' || value.created_at.length > 40 || Number.isNaN(Date.parse(value.created_at))) {
    throw fail('created_at must be an ISO 8601 time');
  }
  return {
    format: 1,
    version: value.version,
    arch: value.arch as ReleaseArch,
    node: { ships: node.ships, version: node.version, abi: node.abi, binary_sha256: binary },
    gpio: value.gpio,
    snapshot: value.snapshot,
    artifact: {
      bytes,
      sha256: hex(artifact.sha256, 'artifact.sha256'),
      unpacked_bytes: int(artifact.unpacked_bytes, 1, MAX_UNPACKED_BYTES, 'artifact.unpacked_bytes'),
    },
    chunks: { bytes: chunkBytes, count, index_sha256: hex(chunks.index_sha256, 'chunks.index_sha256') },
    created_at: value.created_at,
  };
}

/** Signs a manifest with the release key: a compact JWS (ES256, typ sensor-agent-release+jws). */
export async function signReleaseManifest(manifest: ReleaseManifest, key: PrivateJwk): Promise<string> {
  await assertJosePatched();
  const checked = validateReleaseManifest(manifest);
  if (key.use !== 'sig' || key.alg !== SIGNING_ALG || typeof key.d !== 'string')
    throw new ProtocolError('E_KEY', 'the release key must be a private ES256 signing key');
  const signKey = await asJoseKey(key);
  const jws = await jose.JWS.createSign({ format: 'compact', fields: { alg: SIGNING_ALG, kid: key.kid, typ: RELEASE_MANIFEST_TYPE } }, signKey)
    .update(JSON.stringify(checked), 'utf8')
    .final();
  return String(jws);
}

/**
 * Verifies a signed manifest against the pinned release keys only (never a
 * key named by the message), then checks its schema. Throws E_TOO_LARGE,
 * E_MALFORMED, E_ALG or E_SIGNATURE (not a pinned release key's), or
 * E_PARAMS (a well-signed manifest this version cannot read).
 */
export async function verifyReleaseManifest(jws: string, releaseKeys: KeyRing): Promise<{ manifest: ReleaseManifest; signerKid: string }> {
  const token = toCompactText(jws, MAX_RELEASE_MANIFEST_BYTES);
  const header = parseJwsHeader(token);
  if (header.typ !== RELEASE_MANIFEST_TYPE) throw new ProtocolError('E_MALFORMED', `release manifest typ must be "${RELEASE_MANIFEST_TYPE}"`);
  const v = await verifyJws(token, header, releaseKeys);
  return { manifest: validateReleaseManifest(v.payload), signerKid: v.signerKid };
}
