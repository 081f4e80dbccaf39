/**
 * The state directory is checked also when the agent creates it: between the
 * agent's "not there" and its mkdir, another user can plant a directory (or a
 * symlink) at that path; mkdir's EEXIST is accepted, so the directory must be
 * checked again after it. The race is made deterministic by letting the
 * agent's first lstat of the directory report ENOENT while the planted
 * directory is already there (real files, real owners and modes).
 */
import { expect } from 'chai';
import { chown, mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import fsPromises from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StateError, StateStore } from '../../agent/store/state.js';

describe('agent state: a state directory planted while the agent creates it is refused', function () {
  let base: string;
  const realLstat = fsPromises.lstat;

  beforeEach(async function () {
    base = await mkdtemp(join(tmpdir(), 'state-race-'));
  });
  afterEach(async function () {
    fsPromises.lstat = realLstat;
    syncBuiltinESMExports();
    await rm(base, { recursive: true, force: true });
  });

  /** The agent's first lstat of `dir` answers ENOENT, as if the path appeared right after it. */
  function raceOn(dir: string): void {
    let raced = false;
    fsPromises.lstat = (async (...args: Parameters<typeof realLstat>) => {
      if (!raced && args[0] === dir) {
        raced = true;
        throw Object.assign(new Error(`ENOENT: no such file or directory, lstat '${dir}'`), { code: 'ENOENT' });
      }
      return realLstat(...args);
    }) as typeof realLstat;
    syncBuiltinESMExports();
  }

  async function refusal(dir: string): Promise<StateError | undefined> {
    try {
      await StateStore.open(dir, 'race-dev');
      return undefined;
    } catch (err) {
      if (err instanceof StateError) return err;
      throw err;
    }
  }

  it('a world-writable directory of another user planted in the race: E_STATE_OWNER, not used', async function () {
    const dir = join(base, 'state');
    await mkdir(dir, { mode: 0o777 });
    await chown(dir, 65534, 65534);
    raceOn(dir);
    const err = await refusal(dir);
    expect(err?.code, 'the planted directory was used').to.equal('E_STATE_OWNER');
  });

  it('a symlink planted in the race: E_STATE_TYPE', async function () {
    const dir = join(base, 'state');
    const elsewhere = join(base, 'elsewhere');
    await mkdir(elsewhere, { mode: 0o700 });
    await symlink(elsewhere, dir);
    raceOn(dir);
    const err = await refusal(dir);
    expect(err?.code, 'the symlink was followed').to.equal('E_STATE_TYPE');
  });

  it('without a race the directory is created 0700 and used', async function () {
    const dir = join(base, 'a', 'state');
    const store = await StateStore.open(dir, 'race-dev');
    expect(store.found).to.equal(false);
    expect((await realLstat(dir)).mode & 0o777).to.equal(0o700);
  });
});
