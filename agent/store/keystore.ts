/**
 * The agent's protected key store: a directory of mode 0700 holding
 * `signing.jwk`, `encryption.jwk` and (after a rotation, until the new key is
 * in use) `encryption.previous.jwk`, each a private JWK, mode 0600.
 *
 * Like OpenSSH, `KeyStore.open` refuses to read any key unless the directory
 * and every key file pass these checks (all with lstat, before any read):
 * - the directory is a real directory (not a symlink) with no group/other
 *   permission bits, owned by the agent's uid or root;
 * - every key file is a regular file (no symlink, FIFO, device...), with no
 *   group/other permission bits, owned by the agent's uid or root.
 * Each refusal is a `KeyStoreError` naming the file and the command that fixes it.
 *
 * systemd credentials (`LoadCredential=`, passed as `credentialsDir`, normally
 * `$CREDENTIALS_DIRECTORY`): a key file of the same name there is read instead
 * of the key store's. systemd makes those read-only and readable by the unit's
 * user only, so the rule there is: the directory is a real directory, owned by
 * root or the agent's uid, not writable by others; each credential file is a
 * regular file owned by root or the agent's uid with no permission bits for
 * others (group bits, as in 0440, are accepted). Credentials are read-only:
 * writes go to the key store directory, and changing a key that a credential
 * supplies (generate with force, rotate, write) is refused with
 * E_KEYSTORE_READONLY, since the credential would win again at the next start.
 *
 * Replay protection bound to the keys: `in-use.json` (mode 0600, checked
 * like a key file) says that these keys have been used with a state file,
 * whose seq floor and recent commands are what refuses replays. It is written
 * once, after the state file exists, and removed only after new keys replace
 * these (generate) or the keys are wiped. Keys marked in use whose state file
 * is gone are never acted on again (the agent enrolls with new keys instead):
 * commands captured under them could otherwise be replayed.
 *
 * Not safe for concurrent use by several processes; within one process the
 * mutating methods are serialised.
 */
import { constants, type Stats } from 'node:fs';
import { chmod, lstat, open } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { generateEncryptionKey, generateSigningKey, parsePrivateJwk, toJwkSet, type JwkSet, type KeyUse, type PrivateJwk } from '../../protocol/keys.js';
import { errnoCode, makeDirectories, removeFileSecurely, removeStaleTemps, writeFileAtomic } from '../../lib/durable-file.js';
import { KeyStoreError } from './keystore-errors.js';
import { octalMode as octal, shellQuote as sh } from './file-modes.js';

export type KeyName = 'signing' | 'encryption' | 'encryption.previous';
export type KeySource = 'keystore' | 'credentials';

export const KEY_NAMES: readonly KeyName[] = ['signing', 'encryption', 'encryption.previous'];
const KEY_USE: Readonly<Record<KeyName, KeyUse>> = { signing: 'sig', encryption: 'enc', 'encryption.previous': 'enc' };
/** The marker of keys used with a state file (see above). */
export const IN_USE_FILE = 'in-use.json';
/** Key files are a few KiB at most (RSA 4096 is ~3.3 KiB); anything bigger is refused unread. */
const MAX_KEY_FILE_BYTES = 64 * 1024;

/** The file name of a key in the store: `<name>.jwk`. */
export function keyFileName(name: KeyName): string {
  return `${name}.jwk`;
}

export interface KeyStoreOpenOptions {
  /** systemd credentials directory (`process.env.CREDENTIALS_DIRECTORY`); its key files win. */
  credentialsDir?: string | undefined;
  /** Create the directory (mode 0700) if it does not exist. */
  create?: boolean;
  /** The uid that must own the files besides root; default `process.getuid()`. */
  expectedUid?: number;
}

export interface RotateResult {
  /** The keys before the rotation: the caller signs the rotate ack with `previous.signing`. */
  previous: { signing: PrivateJwk; encryption: PrivateJwk };
  current: { signing: PrivateJwk; encryption: PrivateJwk };
  /** Public JWK set of the new signing and encryption keys, for the ack. */
  publicKeys: JwkSet;
}

export interface WipeResult {
  /** Key store file names removed. */
  removed: string[];
  /** Names still supplied by systemd credentials, which the agent cannot remove. */
  leftInCredentials: string[];
}

interface LoadedKey {
  jwk: PrivateJwk;
  source: KeySource;
}

interface Checked {
  path: string;
  stats: Stats;
  source: KeySource;
}

export class KeyStore {
  private readonly keys = new Map<KeyName, LoadedKey>();
  private queue: Promise<unknown> = Promise.resolve();
  #inUse = false;

  private constructor(
    readonly dir: string,
    readonly credentialsDir: string | undefined,
  ) {}

  /** Checks the store as described above, cleans stale temp files and loads the keys present. */
  static async open(dir: string, options: KeyStoreOpenOptions = {}): Promise<KeyStore> {
    const uid = options.expectedUid ?? process.getuid?.();
    const credentialsDir = options.credentialsDir === '' ? undefined : options.credentialsDir;
    await checkStoreDirectory(dir, options.create === true, uid);
    if (credentialsDir !== undefined) await checkCredentialsDirectory(credentialsDir, uid);

    // Every key file present is checked before any key is read.
    const toRead = new Map<KeyName, Checked>();
    for (const name of KEY_NAMES) {
      const own = await checkKeyFile(join(dir, keyFileName(name)), uid, 'keystore');
      const cred = credentialsDir === undefined ? undefined : await checkKeyFile(join(credentialsDir, keyFileName(name)), uid, 'credentials');
      const chosen = cred ?? own;
      if (chosen !== undefined) toRead.set(name, chosen);
    }
    const inUse = (await checkKeyFile(join(dir, IN_USE_FILE), uid, 'keystore')) !== undefined;
    await removeStaleTemps(dir, { secure: true });

    const store = new KeyStore(dir, credentialsDir);
    store.#inUse = inUse;
    for (const [name, checked] of toRead) {
      store.keys.set(name, { jwk: await readKeyFile(checked, KEY_USE[name]), source: checked.source });
    }
    return store;
  }

  get signingKey(): PrivateJwk | undefined {
    return this.keys.get('signing')?.jwk;
  }

  get encryptionKey(): PrivateJwk | undefined {
    return this.keys.get('encryption')?.jwk;
  }

  get previousEncryptionKey(): PrivateJwk | undefined {
    return this.keys.get('encryption.previous')?.jwk;
  }

  get(name: KeyName): PrivateJwk | undefined {
    return this.keys.get(name)?.jwk;
  }

  /** Where a loaded key came from, or undefined if absent. */
  sourceOf(name: KeyName): KeySource | undefined {
    return this.keys.get(name)?.source;
  }

  /** The keys commands may be encrypted to: current first, then previous (distinct kids). */
  decryptionKeys(): PrivateJwk[] {
    const out: PrivateJwk[] = [];
    for (const k of [this.encryptionKey, this.previousEncryptionKey]) {
      if (k !== undefined && !out.some((o) => o.kid === k.kid)) out.push(k);
    }
    return out;
  }

  /** True when these keys have been used with a state file (`in-use.json`). */
  get inUse(): boolean {
    return this.#inUse;
  }

  /** Marks the current keys as used with a state file (atomic, durable). Call once the state file exists. */
  markInUse(deviceId: string): Promise<void> {
    return this.serialised(async () => {
      await writeFileAtomic(join(this.dir, IN_USE_FILE), `${JSON.stringify({ device_id: deviceId, since: Math.floor(Date.now() / 1000) })}\n`, { mode: 0o600 });
      this.#inUse = true;
    });
  }

  /** True when both a signing and an encryption key are present. */
  hasKeys(): boolean {
    return this.keys.has('signing') && this.keys.has('encryption');
  }

  /** Public JWK set of the current signing and encryption keys. */
  publicKeys(): JwkSet {
    const { signing, encryption } = this.requireCurrent();
    return toJwkSet([signing, encryption]);
  }

  /** Path of a key's file in the key store directory. */
  pathOf(name: KeyName): string {
    return join(this.dir, keyFileName(name));
  }

  /** Validates `jwk` for `name` and writes it atomically (0600) to the key store directory. */
  write(name: KeyName, jwk: PrivateJwk): Promise<void> {
    return this.serialised(() => this.writeKey(name, jwk));
  }

  /** Securely removes a key from the key store directory; true if a file was removed. */
  remove(name: KeyName): Promise<boolean> {
    return this.serialised(() => this.removeKey(name));
  }

  /** Decommissioning: securely removes every key file and forgets every key in memory. */
  wipe(): Promise<WipeResult> {
    return this.serialised(async () => {
      const leftInCredentials = KEY_NAMES.filter((n) => this.sourceOf(n) === 'credentials').map(keyFileName);
      const removed: string[] = [];
      for (const name of KEY_NAMES) if (await this.removeKey(name)) removed.push(keyFileName(name));
      await this.removeInUse();
      this.keys.clear();
      return { removed, leftInCredentials };
    });
  }

  /**
   * Creates a signing key (ES256) and an encryption key (P-256, or RSA with
   * `rsa`) and returns their public JWK set. Refuses with E_KEYSTORE_EXISTS
   * if a signing or encryption key exists, unless `force` (which also removes
   * a previous encryption key, as it belongs to the replaced identity).
   */
  generate(options: { rsa?: boolean; force?: boolean } = {}): Promise<JwkSet> {
    return this.serialised(async () => {
      const existing = (['signing', 'encryption'] as const).filter((n) => this.keys.has(n));
      if (existing.length > 0 && options.force !== true) {
        throw new KeyStoreError(
          'E_KEYSTORE_EXISTS',
          this.dir,
          `key store ${this.dir} already holds ${existing.map(keyFileName).join(' and ')}; refusing to replace them without --force`,
        );
      }
      for (const name of KEY_NAMES) this.refuseIfCredential(name);
      const signing = await generateSigningKey();
      const encryption = await generateEncryptionKey({ type: options.rsa === true ? 'rsa' : 'ec' });
      await this.writeKey('signing', signing);
      await this.writeKey('encryption', encryption);
      await this.removeKey('encryption.previous');
      // Last: until the new keys are all in place, a crash leaves the store marked (and so replaced again).
      await this.removeInUse();
      return toJwkSet([signing, encryption]);
    });
  }

  /**
   * Generates new signing and encryption keys (RSA stays RSA unless `rsa` says
   * otherwise) and keeps the current encryption key as `encryption.previous.jwk`
   * (replacing an older previous key). Returns old and new keys.
   *
   * Write order, each write atomic, so a power cut at any instant leaves a
   * usable store that decrypts commands under the old encryption key:
   *   1. encryption.previous.jwk := old encryption key  (old keys still current)
   *   2. encryption.jwk := new encryption key           (old one kept as previous)
   *   3. signing.jwk := new signing key
   * The old signing key survives only in the returned value: if the agent dies
   * after step 3 and before the ack is sent, the server will not know the new
   * signing key until the device is rotated or enrolled again.
   */
  rotate(options: { rsa?: boolean } = {}): Promise<RotateResult> {
    return this.serialised(async () => {
      const previous = this.requireCurrent();
      for (const name of KEY_NAMES) this.refuseIfCredential(name);
      const rsa = options.rsa ?? previous.encryption.kty === 'RSA';
      const signing = await generateSigningKey();
      const encryption = await generateEncryptionKey({ type: rsa ? 'rsa' : 'ec' });
      await this.writeKey('encryption.previous', previous.encryption);
      await this.writeKey('encryption', encryption);
      await this.writeKey('signing', signing);
      return { previous, current: { signing, encryption }, publicKeys: toJwkSet([signing, encryption]) };
    });
  }

  private async writeKey(name: KeyName, jwk: PrivateJwk): Promise<void> {
    this.refuseIfCredential(name);
    const valid = await parsePrivateJwk(jwk, KEY_USE[name]);
    await writeFileAtomic(this.pathOf(name), `${JSON.stringify(valid)}\n`, { mode: 0o600 });
    this.keys.set(name, { jwk: valid, source: 'keystore' });
  }

  private async removeKey(name: KeyName): Promise<boolean> {
    const removed = await removeFileSecurely(this.pathOf(name));
    if (this.sourceOf(name) === 'keystore') this.keys.delete(name);
    return removed;
  }

  private async removeInUse(): Promise<void> {
    await removeFileSecurely(join(this.dir, IN_USE_FILE));
    this.#inUse = false;
  }

  private refuseIfCredential(name: KeyName): void {
    if (this.sourceOf(name) !== 'credentials') return;
    const path = join(this.credentialsDir ?? '', keyFileName(name));
    throw new KeyStoreError(
      'E_KEYSTORE_READONLY',
      path,
      `${keyFileName(name)} is supplied by the systemd credential ${path}, which the agent cannot change (and which would win again at the next start); change the credential source of the unit's LoadCredential= instead`,
    );
  }

  private requireCurrent(): { signing: PrivateJwk; encryption: PrivateJwk } {
    const signing = this.signingKey;
    const encryption = this.encryptionKey;
    if (signing === undefined || encryption === undefined) {
      const missing = signing === undefined ? this.pathOf('signing') : this.pathOf('encryption');
      throw new KeyStoreError('E_KEYSTORE_MISSING', missing, `key store file ${missing} does not exist; generate keys first (sensor-agent keygen)`);
    }
    return { signing, encryption };
  }

  private serialised<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }
}

async function checkStoreDirectory(dir: string, create: boolean, uid: number | undefined): Promise<void> {
  let st = await lstatOrUndefined(dir);
  if (st === undefined) {
    if (!create) {
      throw new KeyStoreError('E_KEYSTORE_MISSING', dir, `key store directory ${dir} does not exist`, {
        fix: `install -d -m 700 -o ${ownerName(uid)} ${sh(dir)}`,
      });
    }
    try {
      await makeDirectories(dir, 0o700);
      await chmod(dir, 0o700);
      st = await lstat(dir);
    } catch (err) {
      throw new KeyStoreError('E_KEYSTORE_IO', dir, `could not create key store directory ${dir}: ${err instanceof Error ? err.message : String(err)}`, {
        cause: err,
      });
    }
  }
  if (st.isSymbolicLink()) {
    throw new KeyStoreError(
      'E_KEYSTORE_TYPE',
      dir,
      `key store directory ${dir} is a symbolic link, which could redirect the private keys; replace it with the real directory`,
      {
        fix: `target=$(readlink -f ${sh(dir)}) && rm ${sh(dir)} && mv "$target" ${sh(dir)}`,
      },
    );
  }
  if (!st.isDirectory()) {
    throw new KeyStoreError('E_KEYSTORE_TYPE', dir, `key store directory ${dir} is not a directory`, {
      fix: `mv ${sh(dir)} ${sh(`${dir}.bak`)} && install -d -m 700 ${sh(dir)}`,
    });
  }
  if ((st.mode & 0o077) !== 0) {
    throw new KeyStoreError(
      'E_KEYSTORE_PERMS',
      dir,
      `key store directory ${dir} has mode ${octal(st.mode)}, which gives other users access to the private keys`,
      { fix: `chmod 700 ${sh(dir)}` },
    );
  }
  checkOwner(dir, st, uid, 'key store directory', (o) => o === 0 || o === uid);
}

async function checkCredentialsDirectory(dir: string, uid: number | undefined): Promise<void> {
  const st = await lstatOrUndefined(dir);
  if (st === undefined) {
    throw new KeyStoreError(
      'E_KEYSTORE_MISSING',
      dir,
      `credentials directory ${dir} (CREDENTIALS_DIRECTORY) does not exist; check the unit's LoadCredential= settings`,
    );
  }
  if (st.isSymbolicLink() || !st.isDirectory()) {
    throw new KeyStoreError(
      'E_KEYSTORE_TYPE',
      dir,
      `credentials directory ${dir} is not a real directory (a symlink or another file type); check the unit's LoadCredential= settings`,
    );
  }
  if ((st.mode & 0o002) !== 0) {
    throw new KeyStoreError('E_KEYSTORE_PERMS', dir, `credentials directory ${dir} has mode ${octal(st.mode)}, which lets any user add or replace keys`, {
      fix: `chmod o-w ${sh(dir)}`,
    });
  }
  checkOwner(dir, st, uid, 'credentials directory', (o) => o === 0 || o === uid);
}

/** lstat-checks one key file; undefined when it does not exist. */
async function checkKeyFile(path: string, uid: number | undefined, source: KeySource): Promise<Checked | undefined> {
  const stats = await lstatOrUndefined(path);
  if (stats === undefined) return undefined;
  const what = source === 'credentials' ? 'credential file' : 'key store file';
  if (stats.isSymbolicLink()) {
    throw new KeyStoreError(
      'E_KEYSTORE_TYPE',
      path,
      `${what} ${path} is a symbolic link, which could redirect or expose a private key; replace it with the real file`,
      {
        fix: `cp --remove-destination "$(readlink -f ${sh(path)})" ${sh(path)} && chmod 600 ${sh(path)}`,
      },
    );
  }
  if (!stats.isFile()) {
    throw new KeyStoreError(
      'E_KEYSTORE_TYPE',
      path,
      `${what} ${path} is ${fileType(stats)}, not a regular file; remove it and restore the key from a backup or generate keys again`,
      { fix: `rm ${stats.isDirectory() ? '-r ' : ''}${sh(path)}` },
    );
  }
  const forbidden = source === 'credentials' ? 0o007 : 0o077;
  if ((stats.mode & forbidden) !== 0) {
    const exposure = (stats.mode & forbidden & 0o044) !== 0 ? 'read' : 'tamper with';
    const fix = source === 'credentials' ? `chmod o= ${sh(path)}` : `chmod 600 ${sh(path)}`;
    throw new KeyStoreError('E_KEYSTORE_PERMS', path, `${what} ${path} has mode ${octal(stats.mode)}, which lets other users ${exposure} a private key`, {
      fix,
    });
  }
  checkOwner(path, stats, uid, what, (o) => o === 0 || o === uid);
  return { path, stats, source };
}

async function readKeyFile(checked: Checked, use: KeyUse): Promise<PrivateJwk> {
  const { path, stats } = checked;
  let text: string;
  try {
    // O_NOFOLLOW + same inode as checked: the file cannot be swapped for a link in between.
    const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    try {
      const now = await fh.stat();
      if (!now.isFile() || now.ino !== stats.ino || now.dev !== stats.dev) {
        throw new KeyStoreError('E_KEYSTORE_TYPE', path, `key file ${path} was replaced while being opened; refusing it`);
      }
      if (now.size > MAX_KEY_FILE_BYTES) {
        throw new KeyStoreError(
          'E_KEYSTORE_CORRUPT',
          path,
          `key file ${path} is ${now.size} bytes, far too large for a JWK; restore it from a backup or generate keys again`,
        );
      }
      text = await fh.readFile({ encoding: 'utf8' });
    } finally {
      await fh.close();
    }
  } catch (err) {
    if (err instanceof KeyStoreError) throw err;
    if (errnoCode(err) === 'ELOOP') {
      throw new KeyStoreError('E_KEYSTORE_TYPE', path, `key file ${path} became a symbolic link while being opened; refusing it`, { cause: err });
    }
    throw new KeyStoreError('E_KEYSTORE_IO', path, `could not read key file ${path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw new KeyStoreError(
      'E_KEYSTORE_CORRUPT',
      path,
      `key file ${path} is not valid JSON (truncated or damaged); restore it from a backup or generate keys again`,
      { cause },
    );
  }
  try {
    return await parsePrivateJwk(value, use);
  } catch (cause) {
    const why = cause instanceof Error ? cause.message : String(cause);
    throw new KeyStoreError(
      'E_KEYSTORE_CORRUPT',
      path,
      `key file ${path} is not a valid private "${use}" JWK (${why}); restore it from a backup or generate keys again`,
      { cause },
    );
  }
}

function checkOwner(path: string, st: Stats, uid: number | undefined, what: string, ok: (owner: number) => boolean): void {
  if (uid === undefined || ok(st.uid)) return;
  throw new KeyStoreError(
    'E_KEYSTORE_OWNER',
    path,
    `${what} ${path} is owned by uid ${st.uid}, not by the agent's user (uid ${uid}) or root, so another user could change or read it`,
    {
      fix: `chown ${ownerName(uid)} ${sh(path)}`,
    },
  );
}

async function lstatOrUndefined(path: string): Promise<Stats | undefined> {
  try {
    return await lstat(path);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw new KeyStoreError('E_KEYSTORE_IO', path, `could not inspect ${path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

/** The user name for a fix command: the current user's name if `uid` is ours, else the number. */
function ownerName(uid: number | undefined): string {
  if (uid === undefined) return '"$(id -un)"';
  try {
    const me = userInfo();
    if (me.uid === uid) return sh(me.username);
  } catch {
    // no passwd entry: fall back to the number
  }
  return String(uid);
}

function fileType(st: Stats): string {
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isDirectory()) return 'a directory';
  return 'not a regular file';
}
