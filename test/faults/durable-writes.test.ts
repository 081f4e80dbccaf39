/**
 * Crashes between the temp write and the rename (a real SIGKILL of a child
 * process at that instant), for the agent's state and its key store, and a
 * full disk during a write (a small tmpfs): old or new contents, never a torn
 * file, and a clear error.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { KeyStore } from '../../agent/store/keystore.js';
import { StateStore, readState } from '../../agent/store/state.js';
import { parsePrivateJwk } from '../../protocol/index.js';
import { NO_TMPFS, skipBecause } from '../helpers/skip.js';

const run = promisify(execFile);
const CHILD = fileURLToPath(new URL('./crash-child.js', import.meta.url));

/** Runs the crash child; resolves with how it ended. */
function child(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; signal: string | null; out: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [CHILD, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (b: Buffer) => (out += b.toString()));
    c.stderr.on('data', (b: Buffer) => (out += b.toString()));
    c.on('exit', (code, signal) => resolve({ code, signal, out }));
  });
}

async function snapshot(dir: string): Promise<Map<string, string>> {
  const m = new Map<string, string>();
  for (const f of await readdir(dir)) m.set(f, await readFile(join(dir, f), 'utf8'));
  return m;
}

const temps = (files: Iterable<string>): string[] => [...files].filter((f) => /\.tmp-[0-9a-f]+$/.test(f));

describe('faults: crash between temp write and rename, and a full disk', function () {
  this.timeout(60_000);
  let dir: string;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'faults-durable-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('state: SIGKILL before the rename leaves the old state (the complete new one only in a temp file the next start removes), 5 times over', async () => {
    const stateDir = join(dir, 'state');
    expect((await child(['state', stateDir, 'dev-1'])).code).to.equal(0);
    for (let round = 1; round <= 5; round++) {
      const before = await readFile(join(stateDir, 'state.json'), 'utf8');
      const r = await child(['state', stateDir, 'dev-1'], { CRASH_RENAME_TARGET: '^state\\.json$' });
      expect(r.signal, r.out).to.equal('SIGKILL');
      const files = await snapshot(stateDir);
      expect(files.get('state.json'), 'state.json untouched by the crash').to.equal(before);
      const t = temps(files.keys());
      expect(t, 'the temp file the crash left').to.have.length(1);
      const tempState = JSON.parse(files.get(t[0] as string) as string) as { last_seq: number };
      expect(tempState.last_seq, 'the temp file was complete (written and fsynced)').to.equal(round + 1);
      // The next start: stale temp removed, old state read.
      const store = await StateStore.open(stateDir, 'dev-1');
      expect(store.state.last_seq).to.equal(round);
      expect(temps(await readdir(stateDir))).to.deep.equal([]);
      // And the write, done again without a crash, lands.
      expect((await child(['state', stateDir, 'dev-1'])).code).to.equal(0);
      expect((await readState(stateDir))?.last_seq).to.equal(round + 1);
    }
  });

  for (const [op, names] of [
    ['keystore-rotate', ['encryption.previous.jwk', 'encryption.jwk', 'signing.jwk']],
    ['keystore-generate', ['signing.jwk', 'encryption.jwk']],
  ] as const) {
    for (let at = 1; at <= names.length; at++) {
      it(`key store, ${op}: SIGKILL before rename #${at} leaves every key file old or complete-new, and the store opens`, async () => {
        const ks = join(dir, 'keys');
        expect((await child(['keystore-generate', ks])).code).to.equal(0);
        const before = await snapshot(ks);
        const r = await child([op, ks], { CRASH_RENAME_TARGET: '\\.jwk$', CRASH_AT: String(at) });
        expect(r.signal, r.out).to.equal('SIGKILL');
        const after = await snapshot(ks);
        const renamed = new Set<string>(names.slice(0, at - 1));
        for (const [name, text] of after) {
          if (temps([name]).length) continue;
          if (renamed.has(name)) {
            if (before.has(name)) expect(text, `${name} was replaced before the crash`).to.not.equal(before.get(name));
          } else {
            expect(text, `${name} untouched`).to.equal(before.get(name));
          }
          await parsePrivateJwk(JSON.parse(text) as unknown); // complete and valid, never torn
        }
        expect(temps(after.keys()), 'the temp file the crash left').to.have.length(1);
        for (const t of temps(after.keys())) await parsePrivateJwk(JSON.parse(after.get(t) as string) as unknown);
        const store = await KeyStore.open(ks);
        expect(store.signingKey?.kid).to.be.a('string');
        expect(store.encryptionKey?.kid).to.be.a('string');
        expect(temps(await readdir(ks)), 'stale temps removed at open').to.deep.equal([]);
        for (const f of await readdir(ks)) expect((await stat(join(ks, f))).mode & 0o777, f).to.equal(0o600);
      });
    }
  }

  describe('a full disk (a 64 KiB tmpfs)', () => {
    let mnt: string;
    let mounted = false;

    beforeEach(async function () {
      mnt = join(dir, 'mnt');
      await mkdir(mnt);
      try {
        await run('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'tmpfs', mnt]);
        mounted = true;
      } catch (err) {
        if (process.env.REQUIRE_TMPFS === '1') throw err;
        skipBecause(this, NO_TMPFS);
      }
    });
    afterEach(async () => {
      if (mounted) await run('umount', [mnt]);
      mounted = false;
    });

    async function fill(where: string): Promise<void> {
      const chunk = Buffer.alloc(4096, 0x78);
      for (let i = 0; ; i++) {
        try {
          await writeFile(join(where, `filler-${i}`), chunk);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOSPC') return;
          throw err;
        }
      }
    }

    it('state: E_DISK_FULL with a clear message, state.json keeps its old contents, no temp left; works again once space is freed', async () => {
      const stateDir = join(mnt, 'state');
      const store = await StateStore.open(stateDir, 'dev-1');
      await store.update((d) => {
        d.last_seq = 7;
      });
      const before = await readFile(join(stateDir, 'state.json'), 'utf8');
      await fill(mnt);
      let error: (Error & { code?: string }) | undefined;
      try {
        await store.update((d) => {
          d.last_seq = 8;
          d.settings.sensor = { name: 'x'.repeat(64) };
        });
      } catch (err) {
        error = err as Error & { code?: string };
      }
      expect(error?.code, String(error)).to.equal('E_DISK_FULL');
      expect(error?.message)
        .to.match(/disk is full/)
        .and.to.contain('state.json');
      expect(await readFile(join(stateDir, 'state.json'), 'utf8')).to.equal(before);
      expect(store.state.last_seq, 'the in-memory state follows the disk').to.equal(7);
      expect(temps(await readdir(stateDir))).to.deep.equal([]);
      for (const f of await readdir(mnt)) if (f.startsWith('filler-')) await rm(join(mnt, f));
      await store.update((d) => {
        d.last_seq = 8;
      });
      expect((await readState(stateDir))?.last_seq).to.equal(8);
    });

    it('key store: a generate on a full disk fails clearly and leaves the old keys', async () => {
      const ks = join(mnt, 'keys');
      const store = await KeyStore.open(ks, { create: true });
      await store.generate();
      const before = await snapshot(ks);
      await fill(mnt);
      let error: (Error & { code?: string }) | undefined;
      try {
        await store.generate({ force: true });
      } catch (err) {
        error = err as Error & { code?: string };
      }
      expect(error, 'generate on a full disk must fail').to.not.equal(undefined);
      expect(`${error?.code} ${error?.message}`).to.match(/E_DISK_FULL|disk is full/);
      const after = await snapshot(ks);
      expect(temps(after.keys())).to.deep.equal([]);
      for (const [name, text] of after) {
        // Each file old, or (for a file renamed before the disk filled) complete and new.
        if (text !== before.get(name)) await parsePrivateJwk(JSON.parse(text) as unknown);
      }
      const reopened = await KeyStore.open(ks);
      expect(reopened.signingKey?.kid).to.be.a('string');
    });
  });
});
