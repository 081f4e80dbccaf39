/** `provision-server user add|list|remove|passwd`: operator accounts from the command line, against a real data directory. */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'chai';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { verifyPassword } from '../../server/operators/password.js';
import { runServerCli, useInitializedDataDir } from './run-cli.js';

describe('provision-server user', function () {
  this.timeout(60_000);
  const d = useInitializedDataDir('user-cli-');

  it('adds, lists, changes the password of and removes operators; refusals are coded and change nothing', async () => {
    const pw1 = join(d.dir, 'pw1');
    const pw2 = join(d.dir, 'pw2');
    await writeFile(pw1, 'first password here\n');
    await writeFile(pw2, 'second password here\n');
    const cli = (...a: string[]) => runServerCli([...a, '--data', d.data]);
    let r = await cli('user', 'add', 'alice', '--role', 'admin', '--password-file', pw1);
    expect(r.code, r.stderr).to.equal(0);
    r = await cli('user', 'add', 'bob', '--role', 'viewer', '--password-file', pw1);
    expect(r.code, r.stderr).to.equal(0);
    r = await cli('user', 'add', 'bob', '--role', 'viewer', '--password-file', pw1);
    expect([r.code, r.stderr]).to.satisfy(([c, e]: [number, string]) => c === 2 && e.includes('E_OPERATOR_EXISTS'));
    r = await cli('user', 'add', 'Bad<name>', '--role', 'viewer', '--password-file', pw1);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.include('E_BAD_OPERATOR');
    r = await cli('user', 'add', 'carol', '--role', 'root', '--password-file', pw1);
    expect(r.code).to.equal(2);
    const short = join(d.dir, 'short');
    await writeFile(short, 'short\n');
    r = await cli('user', 'add', 'carol', '--role', 'viewer', '--password-file', short);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.include('E_PASSWORD');

    r = await cli('user', 'list', '--json');
    expect(r.code, r.stderr).to.equal(0);
    expect((JSON.parse(r.stdout) as { name: string; role: string }[]).map((o) => [o.name, o.role])).to.deep.equal([
      ['alice', 'admin'],
      ['bob', 'viewer'],
    ]);
    expect(r.stdout).not.to.include('scrypt');

    r = await cli('user', 'passwd', 'bob', '--password-file', pw2);
    expect(r.code, r.stderr).to.equal(0);
    r = await cli('user', 'passwd', 'nobody', '--password-file', pw2);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.include('E_NO_OPERATOR');
    r = await cli('user', 'remove', 'alice');
    expect(r.code).to.equal(2);
    expect(r.stderr).to.include('E_LAST_ADMIN');
    r = await cli('user', 'remove', 'bob');
    expect(r.code, r.stderr).to.equal(0);

    const s = openSqliteStorage(join(d.data, 'registry.sqlite'));
    try {
      expect((await s.operators.list()).map((o) => o.name)).to.deep.equal(['alice']);
      expect(await verifyPassword('first password here', (await s.operators.passwordHash('alice')) ?? '')).to.equal(true);
      const log = (await s.audit.query({ event: 'operator' })).map((e) => [e.event, e.detail.operator, String(e.detail.by).startsWith('cli:')]);
      expect(log).to.deep.equal([
        ['operator.add', 'alice', true],
        ['operator.add', 'bob', true],
        ['operator.passwd', 'bob', true],
        ['operator.remove', 'bob', true],
      ]);
    } finally {
      await s.close();
    }
  });

  it('--help names the subcommands and says where the password comes from', async () => {
    const r = await runServerCli(['user', 'add', '--help']);
    expect(r.code).to.equal(0);
    expect(r.stdout).to.include('--password-file').and.include('viewer');
  });
});
