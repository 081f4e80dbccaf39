/**
 * Issue 10, finding 9 (server side): `import-legacy` must not hang on a FIFO
 * named like a key file, and human CLI output must not pass control
 * characters from registry strings (user ids, file names) to the terminal.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateEncryptionKey, toPublicJwk } from '../../protocol/index.js';
import { initDataDir } from '../../server/data-dir.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { printable } from '../../server/terminal-text.js';
import { runServerCli } from './run-cli.js';

const ESC_USER = 'eve\u001b]0;owned\u0007\u001b[2J\u009b31m\u202eevil';

describe('server CLI: untrusted names and files', function () {
  this.timeout(30_000);
  let dir: string;
  let data: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cli-untrusted-'));
    data = join(dir, 'data');
    await initDataDir(data);
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('import-legacy refuses a FIFO, a symlink and an oversized file named like key files without blocking, and imports none of them', async () => {
    const root = join(dir, 'seed', 'user_keys', 'user-1');
    await mkdir(root, { recursive: true });
    execFileSync('mkfifo', [join(root, 'fifo-dev_public.pem')]);
    const good = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }) as string;
    await writeFile(join(dir, 'outside.pem'), good);
    await symlink(join(dir, 'outside.pem'), join(root, 'link-dev_public.pem'));
    await writeFile(join(root, 'big-dev_public.pem'), `${good}${'#'.repeat(70 * 1024)}`);
    await writeFile(join(root, 'real-dev_public.pem'), good);

    // Before the fix this blocked forever in open(2)/read(2) on the FIFO; the timeout kills it (code null).
    const r = await runServerCli(['import-legacy', join(dir, 'seed'), '--data', data], { timeoutMs: 15_000 });
    expect(r.code, `exit ${r.code}; stderr: ${r.stderr}`).to.equal(0);
    expect(r.stderr).to.match(/fifo-dev_public\.pem: not a regular file \(a FIFO\)/);
    expect(r.stderr).to.match(/link-dev_public\.pem: not a regular file \(a symbolic link\)/);
    expect(r.stderr).to.match(/big-dev_public\.pem: .*too large for a PEM public key/);
    expect(r.stdout).to.match(/1 imported, 3 skipped/);
    const storage = openSqliteStorage(join(data, 'registry.sqlite'));
    try {
      expect((await storage.devices.list()).map((d) => d.id)).to.deep.equal(['real-dev']);
    } finally {
      await storage.close();
    }
  });

  it('device list and import-legacy show control characters in user ids escaped; --json keeps them exact', async () => {
    const storage = openSqliteStorage(join(data, 'registry.sqlite'));
    try {
      await storage.devices.add({ id: 'esc-1', userId: ESC_USER, origin: 'jwks', encryption: toPublicJwk(await generateEncryptionKey()), state: 'registered' });
    } finally {
      await storage.close();
    }
    const list = await runServerCli(['device', 'list', '--data', data]);
    expect(list.code, list.stderr).to.equal(0);
    // eslint-disable-next-line no-control-regex -- no control character may reach the terminal
    expect(list.stdout).to.not.match(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e]/);
    expect(list.stdout).to.contain('eve\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u{202e}evil');
    const json = await runServerCli(['device', 'list', '--data', data, '--json']);
    const devices = JSON.parse(json.stdout) as { id: string; user_id: string }[];
    expect(devices.find((d) => d.id === 'esc-1')?.user_id).to.equal(ESC_USER);

    // A legacy tree whose user directory carries an escape sequence: named, escaped.
    const root = join(dir, 'seed2', 'user_keys', `x\u001b[31my`);
    await mkdir(root, { recursive: true });
    await writeFile(
      join(root, 'esc-legacy_public.pem'),
      generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }) as string,
    );
    const imp = await runServerCli(['import-legacy', join(dir, 'seed2'), '--data', data, '--dry-run']);
    expect(imp.code, imp.stderr).to.equal(0);
    expect(imp.stdout).to.contain('(user x\\x1b[31my,');
    expect(imp.stdout + imp.stderr).to.not.contain('\u001b');
  });

  it('printable escapes C0, DEL, C1 and bidi controls and leaves other text alone', () => {
    expect(printable('a\tb\nc\u007fd\u0085e\u2066f')).to.equal('a\\x09b\\x0ac\\x7fd\\x85e\\u{2066}f');
    expect(printable('Grüße, 设备 ✓')).to.equal('Grüße, 设备 ✓');
  });
});
