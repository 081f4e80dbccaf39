/**
 * The checks of an `upgrade` command before anything changes on the board,
 * each refusing with its stable code (docs: Upgrades): no release key pinned
 * or no installer (E_UPGRADE_UNSUPPORTED), a manifest not signed by a pinned
 * release key (E_UPGRADE_SIGNATURE) or unreadable (E_UPGRADE_MANIFEST),
 * another upgrade in progress (E_UPGRADE_BUSY), another architecture
 * (E_UPGRADE_ARCH), a Node this board lacks (E_UPGRADE_NODE), an older
 * version (E_UPGRADE_DOWNGRADE unless allowed), too little free space
 * (E_UPGRADE_SPACE). Nothing here writes anything.
 */
import { constants } from 'node:fs';
import { access, stat, statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import {
  CodedError,
  compareVersions,
  isProtocolError,
  KeyRing,
  parseJwkSet,
  verifyReleaseManifest,
  type ReleaseArch,
  type ReleaseManifest,
} from '../../protocol/index.js';
import { errnoCode } from '../../lib/durable-file.js';
import { MIN_NODE } from '../selftest.js';
import { readSafeFile, UpgradeFileError } from './files.js';

export type UpgradeRefusalCode =
  | 'E_UPGRADE_UNSUPPORTED'
  | 'E_UPGRADE_SIGNATURE'
  | 'E_UPGRADE_MANIFEST'
  | 'E_UPGRADE_ARCH'
  | 'E_UPGRADE_NODE'
  | 'E_UPGRADE_SPACE'
  | 'E_UPGRADE_DOWNGRADE'
  | 'E_UPGRADE_BUSY';

export class UpgradeRefusal extends CodedError<UpgradeRefusalCode> {
  override readonly name = 'UpgradeRefusal';
}

/** Free space asked beyond the artifact and its unpacked tree. */
export const SPACE_MARGIN_BYTES = 16 * 1024 * 1024;
const MAX_RELEASE_KEYS_BYTES = 64 * 1024;

/** This board's release architecture (process.arch), or undefined when no release is built for it. */
export function boardArch(arch: string = process.arch): ReleaseArch | undefined {
  return arch === 'arm64' ? 'arm64' : arch === 'arm' ? 'armv7' : arch === 'x64' ? 'x64' : undefined;
}

/**
 * The pinned release keys (a public JWK set of `use: "sig"` keys), read without following a
 * symlink; undefined when the file is absent. Throws UpgradeRefusal E_UPGRADE_UNSUPPORTED when it
 * is there but unusable.
 */
export async function loadReleaseKeys(path: string): Promise<KeyRing | undefined> {
  let buf: Buffer | undefined;
  try {
    buf = await readSafeFile(path, MAX_RELEASE_KEYS_BYTES);
  } catch (err) {
    const why = err instanceof UpgradeFileError ? err.message : `${path}: ${(err as Error).message}`;
    throw new UpgradeRefusal('E_UPGRADE_UNSUPPORTED', `release keys unusable: ${why}`);
  }
  if (buf === undefined) return undefined;
  try {
    const keys = await parseJwkSet(JSON.parse(buf.toString('utf8')), 'sig');
    if (keys.length === 0) throw new Error('no signing key (use "sig") in the set');
    return await KeyRing.create(keys);
  } catch (err) {
    throw new UpgradeRefusal('E_UPGRADE_UNSUPPORTED', `release keys ${path} are not a valid JWK set: ${(err as Error).message}`);
  }
}

/** Verifies a manifest with the pinned release keys: E_UPGRADE_SIGNATURE, or E_UPGRADE_MANIFEST when it cannot be read. */
export async function verifyManifest(jws: string, keys: KeyRing): Promise<ReleaseManifest> {
  try {
    return (await verifyReleaseManifest(jws, keys)).manifest;
  } catch (err) {
    if (isProtocolError(err) && err.code === 'E_SIGNATURE') {
      throw new UpgradeRefusal('E_UPGRADE_SIGNATURE', `release manifest not signed by a pinned release key: ${err.message}`);
    }
    throw new UpgradeRefusal('E_UPGRADE_MANIFEST', `release manifest refused: ${(err as Error).message}`);
  }
}

/** The board can run the release: its architecture, and its Node when the release ships none. */
export function checkPlatform(m: ReleaseManifest, arch = process.arch, versions: NodeJS.ProcessVersions = process.versions): void {
  const mine = boardArch(arch);
  if (mine !== m.arch) throw new UpgradeRefusal('E_UPGRADE_ARCH', `release ${m.version} is for ${m.arch}; this board is ${mine ?? arch}`);
  if (m.node.ships) return;
  const [major = 0, minor = 0] = versions.node.split('.').map(Number);
  const newEnough = major > MIN_NODE[0] || (major === MIN_NODE[0] && minor >= MIN_NODE[1]);
  if (versions.modules !== m.node.abi || !newEnough) {
    throw new UpgradeRefusal(
      'E_UPGRADE_NODE',
      `release ${m.version} ships no Node and needs Node ABI ${m.node.abi} (built with ${m.node.version}); this board has Node ${versions.node} (ABI ${versions.modules})${newEnough ? '' : `, older than ${MIN_NODE.join('.')}`}`,
    );
  }
}

/** -1 older, 0 same, 1 newer than the running version; older refused unless allowed. */
export function checkVersion(m: ReleaseManifest, running: string, allowDowngrade: boolean): -1 | 0 | 1 {
  let cmp: -1 | 0 | 1;
  try {
    cmp = compareVersions(m.version, running);
  } catch {
    cmp = 1; // a running version that is not semver (a development tree): anything signed is accepted
  }
  if (cmp < 0 && !allowDowngrade) {
    throw new UpgradeRefusal('E_UPGRADE_DOWNGRADE', `release ${m.version} is older than the running ${running} (the command may say allow_downgrade)`);
  }
  return cmp;
}

/** The installer exists (a regular executable file). */
export async function checkInstaller(path: string): Promise<void> {
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new Error('not a regular file');
    await access(path, constants.X_OK);
  } catch (err) {
    throw new UpgradeRefusal(
      'E_UPGRADE_UNSUPPORTED',
      `no upgrade installer on this board (${path}: ${errnoCode(err) ?? (err as Error).message}); reflash with a bundle that has it`,
    );
  }
}

/** Free bytes (for an unprivileged user) on the file system of `path`, or of its nearest existing ancestor. */
export async function freeBytes(path: string): Promise<number> {
  let p = path;
  for (;;) {
    try {
      const s = await statfs(p);
      return Number(s.bavail) * Number(s.bsize);
    } catch (err) {
      const parent = dirname(p);
      if (errnoCode(err) !== 'ENOENT' || parent === p) throw err;
      p = parent;
    }
  }
}

/** artifact + unpacked + margin free both where the download goes and where releases unpack. */
export async function checkSpace(m: ReleaseManifest, downloadDir: string, installRoot: string): Promise<void> {
  const need = m.artifact.bytes + m.artifact.unpacked_bytes + SPACE_MARGIN_BYTES;
  for (const [where, path] of [
    ['download', downloadDir],
    ['install', installRoot],
  ] as const) {
    const free = await freeBytes(path);
    if (free < need) {
      throw new UpgradeRefusal(
        'E_UPGRADE_SPACE',
        `release ${m.version} needs ${mib(need)} MiB free (artifact ${mib(m.artifact.bytes)} + unpacked ${mib(m.artifact.unpacked_bytes)} + ${mib(SPACE_MARGIN_BYTES)} margin); ${path} (${where}) has ${mib(free)} MiB`,
      );
    }
  }
}

function mib(n: number): string {
  return (n / (1024 * 1024)).toFixed(1);
}
