import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { chmod, chown, lstat, mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { TEMP_FILE_PATTERN, writeFileAtomic } from '../../lib/durable-file.js';
import { KeyStoreError, type KeyStoreErrorCode } from '../../agent/store/keystore-errors.js';
import { KeyStore } from '../../agent/store/keystore.js';
import { generateEncryptionKey, generateSigningKey, type PrivateJwk } from '../../protocol/keys.js';
import { skipBecause } from '../helpers/skip.js';

const run = promisify(execFile);

async function refusal(p: Promise<unknown>, code: KeyStoreErrorCode): Promise<KeyStoreError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(KeyStoreError);
    expect((err as KeyStoreError).code, (err as Error).message).to.equal(code);
    return err as KeyStoreError;
  }
  throw new Error(`expected a ${code} refusal`);
}

describe('agent/keystore', () => {
  let root: string;
  let dir: string;
  let sig: PrivateJwk;
  let enc: PrivateJwk;
  let otherSig: PrivateJwk;

  before(async () => {
    [sig, enc, otherSig] = await Promise.all([generateSigningKey(), generateEncryptionKey(), generateSigningKey()]);
  });

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'keystore-'));
    dir = join(root, 'keys');
  });

  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  /** A valid store: directory 0700, signing.jwk and encryption.jwk 0600. */
  async function populated(): Promise<void> {
    await mkdir(dir, { mode: 0o700 });
    await writeFile(join(dir, 'signing.jwk'), JSON.stringify(sig), { mode: 0o600 });
    await writeFile(join(dir, 'encryption.jwk'), JSON.stringify(enc), { mode: 0o600 });
  }

  it('creates the directory 0700 with create, generates keys 0600 and reads them back', async () => {
    const store = await KeyStore.open(dir, { create: true });
    expect((await lstat(dir)).mode & 0o7777).to.equal(0o700);
    expect(store.hasKeys()).to.equal(false);
    const set = await store.generate();
    expect(set.keys.map((k) => k.use)).to.deep.equal(['sig', 'enc']);
    expect(set.keys.every((k) => !('d' in k))).to.equal(true);
    for (const f of ['signing.jwk', 'encryption.jwk']) expect((await lstat(join(dir, f))).mode & 0o7777).to.equal(0o600);
    const again = await KeyStore.open(dir);
    expect(again.hasKeys()).to.equal(true);
    expect(again.signingKey?.kid).to.equal(set.keys[0]?.kid);
    expect(again.encryptionKey?.kid).to.equal(set.keys[1]?.kid);
    expect(again.sourceOf('signing')).to.equal('keystore');
  });

  it('refuses a missing directory without create, with the install command', async () => {
    const err = await refusal(KeyStore.open(dir), 'E_KEYSTORE_MISSING');
    expect(err.message).to.contain(`fix with: install -d -m 700 -o ${userInfo().username} ${dir}`);
  });

  it('refuses a 0644 key with the chmod fix, before reading any key', async () => {
    await populated();
    await writeFile(join(dir, 'signing.jwk'), '{ corrupt'); // would be E_KEYSTORE_CORRUPT if read first
    const path = join(dir, 'encryption.jwk');
    await chmod(path, 0o644);
    const err = await refusal(KeyStore.open(dir), 'E_KEYSTORE_PERMS');
    expect(err.message).to.equal(`key store file ${path} has mode 0644, which lets other users read a private key; fix with: chmod 600 ${path}`);
    expect(err.path).to.equal(path);
    expect(err.fix).to.equal(`chmod 600 ${path}`);
  });

  it('refuses a 0755 directory with chmod 700 and leaves its stale temps alone', async () => {
    await populated();
    await writeFile(join(dir, '.signing.jwk.tmp-00ff'), 'x', { mode: 0o600 });
    await chmod(dir, 0o755);
    const err = await refusal(KeyStore.open(dir), 'E_KEYSTORE_PERMS');
    expect(err.message).to.contain(`has mode 0755`);
    expect(err.fix).to.equal(`chmod 700 ${dir}`);
    expect(await readdir(dir)).to.include('.signing.jwk.tmp-00ff');
  });

  it('refuses a symlinked key file and a symlinked directory', async () => {
    await populated();
    const elsewhere = join(root, 'elsewhere.jwk');
    await writeFile(elsewhere, JSON.stringify(sig), { mode: 0o600 });
    await rm(join(dir, 'signing.jwk'));
    await symlink(elsewhere, join(dir, 'signing.jwk'));
    const err = await refusal(KeyStore.open(dir), 'E_KEYSTORE_TYPE');
    expect(err.message).to.contain('is a symbolic link');
    expect(err.fix).to.contain(`cp --remove-destination "$(readlink -f ${join(dir, 'signing.jwk')})"`);

    const linkDir = join(root, 'keys-link');
    await rm(join(dir, 'signing.jwk'));
    await symlink(dir, linkDir);
    const dirErr = await refusal(KeyStore.open(linkDir), 'E_KEYSTORE_TYPE');
    expect(dirErr.message).to.contain(`key store directory ${linkDir} is a symbolic link`);
  });

  it('refuses a FIFO key file without blocking on it', async () => {
    await populated();
    await rm(join(dir, 'encryption.jwk'));
    await run('mkfifo', ['-m', '600', join(dir, 'encryption.jwk')]);
    const err = await refusal(KeyStore.open(dir), 'E_KEYSTORE_TYPE');
    expect(err.message).to.contain('is a FIFO (named pipe), not a regular file');
    expect(err.fix).to.equal(`rm ${join(dir, 'encryption.jwk')}`);
  });

  it('refuses a key file or directory owned by another user, with the chown fix', async function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'not root: a chown to another uid needs root (the CI runs as root)');
    await populated();
    const path = join(dir, 'signing.jwk');
    await chown(path, 65534, 65534);
    const err = await refusal(KeyStore.open(dir), 'E_KEYSTORE_OWNER');
    expect(err.message).to.contain(`${path} is owned by uid 65534`);
    expect(err.fix).to.equal(`chown root ${path}`);
    // The same store is fine for uid 65534 (root-owned files are accepted too) ...
    expect((await KeyStore.open(dir, { expectedUid: 65534 })).hasKeys()).to.equal(true);
    // ... until the directory belongs to yet another user.
    await chown(dir, 1234, 1234);
    const dirErr = await refusal(KeyStore.open(dir, { expectedUid: 65534 }), 'E_KEYSTORE_OWNER');
    expect(dirErr.fix).to.equal(`chown 65534 ${dir}`);
  });

  it('refuses corrupt JSON and a key of the wrong use as E_KEYSTORE_CORRUPT', async () => {
    await populated();
    const path = join(dir, 'signing.jwk');
    await writeFile(path, JSON.stringify(sig).slice(0, 40));
    const err = await refusal(KeyStore.open(dir), 'E_KEYSTORE_CORRUPT');
    expect(err.message).to.contain(`key file ${path} is not valid JSON`);
    await writeFile(path, JSON.stringify(enc));
    const useErr = await refusal(KeyStore.open(dir), 'E_KEYSTORE_CORRUPT');
    expect(useErr.message).to.contain('not a valid private "sig" JWK');
  });

  it('reads a credentials directory key first; it wins and cannot be rotated away', async () => {
    await populated();
    const creds = join(root, 'credentials');
    await mkdir(creds, { mode: 0o500 });
    await writeFile(join(creds, 'signing.jwk'), JSON.stringify(otherSig), { mode: 0o440 });
    const store = await KeyStore.open(dir, { credentialsDir: creds });
    expect(store.signingKey?.kid).to.equal(otherSig.kid);
    expect(store.sourceOf('signing')).to.equal('credentials');
    expect(store.encryptionKey?.kid).to.equal(enc.kid);
    expect(store.sourceOf('encryption')).to.equal('keystore');
    await refusal(store.rotate(), 'E_KEYSTORE_READONLY');
    expect(JSON.parse(await readFile(join(dir, 'signing.jwk'), 'utf8')).kid).to.equal(sig.kid);
    expect((await store.wipe()).leftInCredentials).to.deep.equal(['signing.jwk']);

    await chmod(join(creds, 'signing.jwk'), 0o444);
    const err = await refusal(KeyStore.open(dir, { credentialsDir: creds }), 'E_KEYSTORE_PERMS');
    expect(err.message).to.contain(`credential file ${join(creds, 'signing.jwk')} has mode 0444`);
  });

  it('generate refuses to overwrite existing keys without force; force replaces them', async () => {
    await populated();
    await writeFile(join(dir, 'encryption.previous.jwk'), JSON.stringify(enc), { mode: 0o600 });
    const store = await KeyStore.open(dir);
    const err = await refusal(store.generate(), 'E_KEYSTORE_EXISTS');
    expect(err.message).to.contain('signing.jwk and encryption.jwk');
    expect(JSON.parse(await readFile(join(dir, 'signing.jwk'), 'utf8')).kid).to.equal(sig.kid);
    const set = await store.generate({ force: true });
    expect(set.keys[0]?.kid).to.not.equal(sig.kid);
    expect((await readdir(dir)).sort()).to.deep.equal(['encryption.jwk', 'signing.jwk']);
    expect(store.previousEncryptionKey).to.equal(undefined);
  });

  it('rotate writes new keys, keeps the old encryption key as previous and returns the old keys', async () => {
    await populated();
    const store = await KeyStore.open(dir);
    const result = await store.rotate();
    expect(result.previous.signing.kid).to.equal(sig.kid);
    expect(result.previous.encryption.kid).to.equal(enc.kid);
    expect(result.current.signing.kid).to.not.equal(sig.kid);
    expect(result.publicKeys.keys.map((k) => k.kid)).to.deep.equal([result.current.signing.kid, result.current.encryption.kid]);
    const reopened = await KeyStore.open(dir);
    expect(reopened.signingKey?.kid).to.equal(result.current.signing.kid);
    expect(reopened.encryptionKey?.kid).to.equal(result.current.encryption.kid);
    expect(reopened.previousEncryptionKey?.kid).to.equal(enc.kid);
    expect(reopened.decryptionKeys().map((k) => k.kid)).to.deep.equal([result.current.encryption.kid, enc.kid]);
    expect((await lstat(join(dir, 'encryption.previous.jwk'))).mode & 0o7777).to.equal(0o600);
  });

  it('wipe removes every key file and forgets the keys', async () => {
    await populated();
    const store = await KeyStore.open(dir);
    await store.rotate();
    const result = await store.wipe();
    expect(result.removed).to.deep.equal(['signing.jwk', 'encryption.jwk', 'encryption.previous.jwk']);
    expect(await readdir(dir)).to.deep.equal([]);
    expect(store.hasKeys()).to.equal(false);
    expect(store.signingKey).to.equal(undefined);
    expect(store.decryptionKeys()).to.deep.equal([]);
  });

  it('a crash mid-write leaves the old complete key, and the stale temp is removed at the next open', async () => {
    await populated();
    const path = join(dir, 'signing.jwk');
    const crash = new Error('power cut');
    let thrown: unknown;
    await writeFileAtomic(path, JSON.stringify(otherSig), {
      beforeRename: () => {
        throw crash;
      },
    }).catch((e: unknown) => {
      thrown = e;
    });
    expect(thrown).to.equal(crash);
    expect((await readdir(dir)).filter((n) => TEMP_FILE_PATTERN.test(n))).to.have.length(1);
    const store = await KeyStore.open(dir);
    expect(store.signingKey?.kid).to.equal(sig.kid);
    expect((await readdir(dir)).sort()).to.deep.equal(['encryption.jwk', 'signing.jwk']);
  });

  it('write validates the key against its slot', async () => {
    const store = await KeyStore.open(dir, { create: true });
    let thrown: unknown;
    await store.write('encryption', sig).catch((e: unknown) => {
      thrown = e;
    });
    expect((thrown as { code?: string }).code).to.equal('E_KEY');
    expect(await readdir(dir)).to.deep.equal([]);
    await store.write('encryption', enc);
    expect(store.encryptionKey?.kid).to.equal(enc.kid);
    expect(await store.remove('encryption')).to.equal(true);
    expect(store.encryptionKey).to.equal(undefined);
  });
});
