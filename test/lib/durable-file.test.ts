import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { link, lstat, mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { DurableFileError, TEMP_FILE_PATTERN, durableFileError, removeFileSecurely, removeStaleTemps, writeFileAtomic } from '../../lib/durable-file.js';
import { NO_TMPFS, skipBecause } from '../helpers/skip.js';

const run = promisify(execFile);

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected the promise to reject');
}

describe('lib/durable-file', () => {
  let dir: string;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'durable-'));
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes a new file with mode 0600 by default and leaves no temp file', async () => {
    const target = join(dir, 'state.json');
    await writeFileAtomic(target, '{"a":1}');
    expect(await readFile(target, 'utf8')).to.equal('{"a":1}');
    expect((await lstat(target)).mode & 0o7777).to.equal(0o600);
    expect(await readdir(dir)).to.deep.equal(['state.json']);
  });

  it('applies the requested mode exactly, whatever the umask', async () => {
    const target = join(dir, 'public.json');
    const old = process.umask(0o077);
    try {
      await writeFileAtomic(target, new Uint8Array([1, 2, 3]), { mode: 0o644 });
    } finally {
      process.umask(old);
    }
    expect((await lstat(target)).mode & 0o7777).to.equal(0o644);
    expect([...(await readFile(target))]).to.deep.equal([1, 2, 3]);
  });

  it('replaces an existing file; the temp file is complete, private and named .<name>.tmp-<hex> before the rename', async () => {
    const target = join(dir, 'key.jwk');
    await writeFile(target, 'old contents', { mode: 0o600 });
    let seen: { name: string; mode: number; text: string } | undefined;
    await writeFileAtomic(target, 'new contents', {
      beforeRename: async (temp) => {
        seen = { name: temp.slice(dir.length + 1), mode: (await lstat(temp)).mode & 0o7777, text: await readFile(temp, 'utf8') };
        expect(await readFile(target, 'utf8')).to.equal('old contents');
      },
    });
    expect(seen?.name).to.match(/^\.key\.jwk\.tmp-[0-9a-f]{16}$/);
    expect(seen?.name).to.match(TEMP_FILE_PATTERN);
    expect(seen?.mode).to.equal(0o600);
    expect(seen?.text).to.equal('new contents');
    expect(await readFile(target, 'utf8')).to.equal('new contents');
    expect(await readdir(dir)).to.deep.equal(['key.jwk']);
  });

  it('a crash before the rename leaves the old complete file and a stale temp that removeStaleTemps removes', async () => {
    const target = join(dir, 'state.json');
    await writeFile(target, 'old complete file', { mode: 0o600 });
    const crash = new Error('power cut');
    const err = await rejection(
      writeFileAtomic(target, 'new file', {
        beforeRename: () => {
          throw crash;
        },
      }),
    );
    expect(err).to.equal(crash);
    expect(await readFile(target, 'utf8')).to.equal('old complete file');
    const names = await readdir(dir);
    const temps = names.filter((n) => TEMP_FILE_PATTERN.test(n));
    expect(temps).to.have.length(1);
    await writeFile(join(dir, 'unrelated.tmp'), 'keep');
    expect(await removeStaleTemps(dir)).to.deep.equal(temps);
    expect((await readdir(dir)).sort()).to.deep.equal(['state.json', 'unrelated.tmp']);
  });

  it('fails with E_WRITE and leaves nothing behind when the directory is missing', async () => {
    const err = await rejection(writeFileAtomic(join(dir, 'nope', 'file'), 'x'));
    expect(err).to.be.instanceOf(DurableFileError);
    expect((err as DurableFileError).code).to.equal('E_WRITE');
    expect((err as DurableFileError).message).to.contain(join(dir, 'nope', 'file'));
    expect(await readdir(dir)).to.deep.equal([]);
  });

  describe('full disk (ENOSPC)', () => {
    let small: string;
    let mounted = false;

    before(async function () {
      small = await mkdtemp(join(tmpdir(), 'durable-full-'));
      try {
        await run('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'tmpfs', small]);
        mounted = true;
      } catch {
        mounted = false;
      }
    });

    after(async () => {
      if (mounted) await run('umount', [small]);
      await rm(small, { recursive: true, force: true });
    });

    it('on a real 64 KiB tmpfs: E_DISK_FULL, the old file unchanged, no temp file left', async function () {
      if (!mounted) {
        // Covered by the /dev/full test below when mounting is not permitted.
        skipBecause(this, NO_TMPFS);
      }
      const target = join(small, 'state.json');
      await writeFileAtomic(target, 'old state');
      const err = await rejection(writeFileAtomic(target, Buffer.alloc(256 * 1024, 0x61)));
      expect(err).to.be.instanceOf(DurableFileError);
      expect((err as DurableFileError).code).to.equal('E_DISK_FULL');
      expect((err as DurableFileError).message).to.match(/disk is full.*nothing was changed/);
      expect(await readFile(target, 'utf8')).to.equal('old state');
      expect(await readdir(small)).to.deep.equal(['state.json']);
    });

    it('maps a real ENOSPC (from /dev/full) to E_DISK_FULL', async () => {
      const cause = await rejection(writeFile('/dev/full', 'x'));
      expect((cause as NodeJS.ErrnoException).code).to.equal('ENOSPC');
      const err = durableFileError(cause, '/some/state.json', 'write');
      expect(err.code).to.equal('E_DISK_FULL');
      expect(err.message).to.contain('/some/state.json keeps its previous contents');
    });
  });

  describe('removeFileSecurely', () => {
    it('overwrites the contents with zeros before unlinking', async () => {
      const target = join(dir, 'secret.jwk');
      const witness = join(dir, 'witness'); // a second name for the same inode shows what happened to the data
      await writeFile(target, 'PRIVATE KEY MATERIAL');
      await link(target, witness);
      expect(await removeFileSecurely(target)).to.equal(true);
      expect(await readdir(dir)).to.deep.equal(['witness']);
      const after = await readFile(witness);
      expect(after.length).to.equal('PRIVATE KEY MATERIAL'.length);
      expect(after.every((b) => b === 0)).to.equal(true);
    });

    it('unlinks a symlink without touching its target, and returns false for a missing file', async () => {
      const real = join(dir, 'real');
      await writeFile(real, 'keep me');
      await symlink(real, join(dir, 'link'));
      expect(await removeFileSecurely(join(dir, 'link'))).to.equal(true);
      expect(await readFile(real, 'utf8')).to.equal('keep me');
      expect(await removeFileSecurely(join(dir, 'missing'))).to.equal(false);
    });

    it('is used by removeStaleTemps with secure, which leaves directories alone', async () => {
      await mkdir(join(dir, '.x.tmp-ab'));
      const temp = join(dir, '.key.jwk.tmp-0123abcd');
      await writeFile(temp, 'secret');
      await link(temp, join(dir, 'witness'));
      expect(await removeStaleTemps(dir, { secure: true })).to.deep.equal(['.key.jwk.tmp-0123abcd']);
      expect((await readFile(join(dir, 'witness'))).every((b) => b === 0)).to.equal(true);
      expect((await readdir(dir)).sort()).to.deep.equal(['.x.tmp-ab', 'witness']);
    });
  });
});
