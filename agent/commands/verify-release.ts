/**
 * `sensor-agent verify-release`: checks a release before root's installer
 * unpacks it: the manifest's signature against the pinned release keys, the
 * artifact's size and SHA-256 against the manifest. The installer runs it as
 * root with the CURRENT (committed) release, so it reads only the three
 * files named, each opened without following a symlink (O_NOFOLLOW) and
 * checked to be a regular file, and hashes the artifact from that same open
 * file. Exit 0 valid (with --json: the manifest, one line, on stdout);
 * exit 2 refused (with --json: `{"code","detail"}`, one line, on stdout;
 * else `sensor-agent: CODE: detail` on stderr).
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { KeyRing, MAX_RELEASE_MANIFEST_BYTES, parseJwkSet, type ReleaseManifest } from '../../protocol/index.js';
import { errnoCode } from '../../lib/durable-file.js';
import { defineCommand } from '../../lib/cli.js';
import { UpgradeRefusal, verifyManifest } from '../upgrade/checks.js';

export const EXIT_REFUSED = 2;
const MAX_KEYS_BYTES = 64 * 1024;

export class ReleaseCheckError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Opens a regular file without following a symlink. */
async function openRegular(path: string, code: string, what: string): Promise<{ fh: FileHandle; size: number }> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const e = errnoCode(err);
    throw new ReleaseCheckError(
      code,
      e === 'ELOOP' ? `${what} ${path} is a symbolic link (not followed)` : `${what} ${path} cannot be opened: ${e ?? (err as Error).message}`,
    );
  }
  const st = await fh.stat();
  if (!st.isFile()) {
    await fh.close();
    throw new ReleaseCheckError(code, `${what} ${path} is not a regular file`);
  }
  return { fh, size: st.size };
}

async function readSmall(path: string, max: number, code: string, what: string): Promise<string> {
  const { fh, size } = await openRegular(path, code, what);
  try {
    if (size > max) throw new ReleaseCheckError(code, `${what} ${path} is ${size} bytes, more than ${max}`);
    const buf = Buffer.alloc(max + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n === buf.length) throw new ReleaseCheckError(code, `${what} ${path} is more than ${max} bytes`);
    }
    return buf.toString('utf8', 0, n);
  } finally {
    await fh.close();
  }
}

/** Verifies a release from its three files; throws ReleaseCheckError with a stable code. */
export async function verifyRelease(files: { manifest: string; artifact: string; releaseKeys: string }): Promise<ReleaseManifest> {
  const keysText = await readSmall(files.releaseKeys, MAX_KEYS_BYTES, 'E_UPGRADE_UNSUPPORTED', 'release keys');
  let keys: KeyRing;
  try {
    const set = await parseJwkSet(JSON.parse(keysText), 'sig');
    if (set.length === 0) throw new Error('no signing key (use "sig")');
    keys = await KeyRing.create(set);
  } catch (err) {
    throw new ReleaseCheckError('E_UPGRADE_UNSUPPORTED', `release keys ${files.releaseKeys} are not a valid JWK set: ${(err as Error).message}`);
  }
  const jws = (await readSmall(files.manifest, MAX_RELEASE_MANIFEST_BYTES + 2, 'E_UPGRADE_MANIFEST', 'manifest')).trim();
  let m: ReleaseManifest;
  try {
    m = await verifyManifest(jws, keys);
  } catch (err) {
    if (err instanceof UpgradeRefusal) throw new ReleaseCheckError(err.code, err.message);
    throw err;
  }
  const { fh, size } = await openRegular(files.artifact, 'E_UPGRADE_ARTIFACT', 'artifact');
  try {
    if (size !== m.artifact.bytes)
      throw new ReleaseCheckError('E_UPGRADE_ARTIFACT', `artifact ${files.artifact} is ${size} bytes; the manifest says ${m.artifact.bytes}`);
    const hash = createHash('sha256');
    const buf = Buffer.alloc(256 * 1024);
    let pos = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
    const digest = hash.digest('hex');
    if (pos !== m.artifact.bytes || digest !== m.artifact.sha256) {
      throw new ReleaseCheckError('E_UPGRADE_ARTIFACT', `artifact ${files.artifact} has SHA-256 ${digest}; the manifest says ${m.artifact.sha256}`);
    }
  } finally {
    await fh.close();
  }
  return m;
}

export const verifyReleaseCommand = defineCommand({
  command: 'verify-release',
  describe: 'Check a release (signed manifest and artifact) against the pinned release keys; used by the root installer before it unpacks',
  builder: (y) =>
    y
      .option('manifest', { type: 'string', demandOption: true, describe: 'the signed release manifest (compact JWS)' })
      .option('artifact', { type: 'string', demandOption: true, describe: 'the release artifact (tar.gz)' })
      .option('release-keys', { type: 'string', demandOption: true, describe: 'the pinned release keys (release.jwks)' })
      .option('json', { type: 'boolean', default: false, describe: 'machine output on stdout: the manifest (valid) or {"code","detail"} (refused)' })
      .epilogue(
        'Reads only the three files named, none through a symbolic link. Exit status: 0 valid (--json: the manifest as one line of JSON on stdout), 2 refused (--json: {"code","detail"} on stdout; else "sensor-agent: CODE: detail" on stderr). Codes: E_UPGRADE_UNSUPPORTED (release keys unusable), E_UPGRADE_SIGNATURE, E_UPGRADE_MANIFEST, E_UPGRADE_ARTIFACT (size or SHA-256).',
      )
      .example('$0 verify-release --manifest m.jws --artifact artifact.tar.gz \\\n--release-keys /etc/sensor-agent/release.jwks --json', ''),
  handler: async (args) => {
    try {
      const m = await verifyRelease({ manifest: args.manifest, artifact: args.artifact, releaseKeys: args.releaseKeys });
      process.stdout.write(args.json ? `${JSON.stringify(m)}\n` : `release ${m.version} (${m.arch}, ${m.artifact.bytes} bytes) is valid\n`);
    } catch (err) {
      if (!(err instanceof ReleaseCheckError)) throw err;
      if (args.json) process.stdout.write(`${JSON.stringify({ code: err.code, detail: err.message })}\n`);
      else process.stderr.write(`sensor-agent: ${err.code}: ${err.message}\n`);
      process.exitCode = EXIT_REFUSED;
    }
  },
});
