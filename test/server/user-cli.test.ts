/** `provision-server user add|list|remove|passwd`: operator accounts from the command line, against a real data directory. */
import { spawn, spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'chai';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { verifyPassword } from '../../server/operators/password.js';
import { skipBecause } from '../helpers/skip.js';
import { SERVER_CLI, runServerCli, useInitializedDataDir } from './run-cli.js';

/** Runs `command` with `input` written to its standard input in pieces, `gapMs` apart; its exit status, stdout and stderr. */
function runWithInput(command: string, args: string[], pieces: string[], gapMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
    let i = 0;
    const next = (): void => {
      if (i < pieces.length) {
        child.stdin.write(pieces[i++]);
        setTimeout(next, gapMs);
      } else setTimeout(() => child.stdin.end(), gapMs);
    };
    setTimeout(next, gapMs);
  });
}

const hashOf = async (data: string, name: string): Promise<string> => {
  const s = openSqliteStorage(join(data, 'registry.sqlite'));
  try {
    return (await s.operators.passwordHash(name)) ?? '';
  } finally {
    await s.close();
  }
};

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

  it('reads the password from standard input when it is not a terminal (its first line)', async () => {
    const r = await runWithInput(
      process.execPath,
      [SERVER_CLI, 'user', 'add', 'piped', '--role', 'operator', '--data', d.data],
      ['piped password 1\nignored\n'],
      50,
    );
    expect(r.code, r.out).to.equal(0);
    expect(await verifyPassword('piped password 1', await hashOf(d.data, 'piped'))).to.equal(true);
  });

  it('on a terminal, prompts twice without echo; two different answers are refused (E_PASSWORD) and add nothing', async function () {
    if (spawnSync('script', ['--version']).status !== 0) skipBecause(this, 'no util-linux `script` to give the command a terminal');
    const cmd = [process.execPath, SERVER_CLI, 'user', 'add', 'typed', '--role', 'viewer', '--data', d.data].map((a) => `'${a}'`).join(' ');
    let r = await runWithInput('script', ['-qec', cmd, '/dev/null'], ['typed password 1\r', 'typed password 2\r'], 700);
    expect(r.code, r.out).to.equal(2);
    expect(r.out).to.include('E_PASSWORD');
    expect(await hashOf(d.data, 'typed')).to.equal('');
    r = await runWithInput('script', ['-qec', cmd, '/dev/null'], ['typed password 1\r', 'typed password 1\r'], 700);
    expect(r.code, r.out).to.equal(0);
    expect(r.out).to.include('password:').and.include('again:').and.not.include('typed password');
    expect(await verifyPassword('typed password 1', await hashOf(d.data, 'typed'))).to.equal(true);
  });

  it('--help names the subcommands and says where the password comes from', async () => {
    const r = await runServerCli(['user', 'add', '--help']);
    expect(r.code).to.equal(0);
    expect(r.stdout).to.include('--password-file').and.include('viewer');
  });
});
