/**
 * A second server machine for the same fleet: `keys export` on the first,
 * `init --join` on the second, one PostgreSQL registry (a throwaway cluster).
 * The joined machine has the same server keys, trust anchors, release keys,
 * HTTP token, topic prefix and registry, its own broker connection, and the
 * files their modes; bad input is refused with nothing written.
 */
import { expect } from 'chai';
import { mkdtemp, readFile, rm, stat, writeFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { postgresBin, postgresRequired, NO_POSTGRES, startPgCluster, type PgCluster } from '../helpers/pg-cluster.js';
import { skipBecause } from '../helpers/skip.js';
import { runServerCli } from './run-cli.js';

const mode = async (p: string): Promise<number> => (await stat(p)).mode & 0o777;
const json = async (p: string): Promise<Record<string, unknown>> => JSON.parse(await readFile(p, 'utf8')) as Record<string, unknown>;

describe('server: a second machine joins the fleet (keys export, init --join, one PostgreSQL registry)', function () {
  this.timeout(120_000);
  let pg: PgCluster | undefined;
  let dir: string;
  let url: string;

  before(async function () {
    if (!postgresBin()) {
      if (postgresRequired()) throw new Error(NO_POSTGRES);
      skipBecause(this, NO_POSTGRES);
    }
    pg = await startPgCluster();
    url = await pg.createDatabase('fleet');
    dir = await mkdtemp(join(tmpdir(), 'server-join-'));
  });
  after(async () => {
    await pg?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('exports the first machine and makes the second from it: same keys, token, prefix, registry; its own broker; modes', async () => {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    const file = join(dir, 'join.json');
    let r = await runServerCli(['init', '--data', a, '--registry', url, '--broker', 'mqtts://broker.example:8884', '--topic-prefix', 'plant1']);
    expect(r.code, r.stderr).to.equal(0);
    r = await runServerCli(['keys', 'export', '--data', a, '--out', file]);
    expect(r.code, r.stderr).to.equal(0);
    expect(await mode(file)).to.equal(0o600);
    expect(r.stdout).to.contain('init --data DIR --join');
    // The release signing key stays where it is.
    expect(await readFile(file, 'utf8')).to.not.contain((await json(join(a, 'keys', 'release.jwk'))).d as string);
    r = await runServerCli(['init', '--data', b, '--join', file, '--broker', 'mqtts://broker.example:8884', '--cert', 'b.crt', '--key', 'b.key']);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.contain('serve --data');
    for (const f of ['keys/signing.jwk', 'keys/encryption.jwk', 'keys/trust.jwks', 'keys/server.json', 'release.jwks', 'http.token']) {
      expect(await readFile(join(b, f), 'utf8'), f).to.equal(await readFile(join(a, f), 'utf8'));
    }
    expect(await mode(join(b, 'keys', 'signing.jwk'))).to.equal(0o600);
    expect(await mode(join(b, 'keys', 'encryption.jwk'))).to.equal(0o600);
    expect(await mode(join(b, 'http.token'))).to.equal(0o600);
    expect(await mode(join(b, 'keys'))).to.equal(0o700);
    const config = await json(join(b, 'server.json'));
    expect(config.registry).to.equal(url);
    expect(config.topic_prefix).to.equal('plant1');
    expect(config.broker).to.deep.equal({ url: 'mqtts://broker.example:8884', cert: join(process.cwd(), 'b.crt'), key: join(process.cwd(), 'b.key') });
    expect(await readdir(join(b, 'keys'))).to.not.include('release.jwk');
    // Both machines read the one registry.
    r = await runServerCli(['device', 'add', '--device', 'joined-1', '--data', a, '--user', 'u', '--jwks', await jwksFile(dir)]);
    expect(r.code, r.stderr).to.equal(0);
    r = await runServerCli(['device', 'list', '--data', b, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    expect((JSON.parse(r.stdout) as { id: string }[]).map((d) => d.id)).to.deep.equal(['joined-1']);
  });

  it('refuses bad input with a code and writes nothing', async () => {
    const a = join(dir, 'a');
    const file = join(dir, 'join.json');
    const target = join(dir, 'c');
    // An existing export is not overwritten without --force.
    let r = await runServerCli(['keys', 'export', '--data', a, '--out', file]);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.contain('E_EXISTS');
    // Fleet settings come from the file.
    r = await runServerCli(['init', '--data', target, '--join', file, '--server-id', 'other']);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.contain('E_USAGE').and.to.contain('--server-id');
    // Not a join file.
    const bad = join(dir, 'bad.json');
    await writeFile(bad, JSON.stringify({ format: 'something-else' }));
    r = await runServerCli(['init', '--data', target, '--join', bad]);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.contain('E_JOIN');
    // A registry no other machine can share.
    r = await runServerCli(['init', '--data', target, '--join', file, '--registry', join(dir, 'local.sqlite')]);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.contain('E_USAGE').and.to.contain('PostgreSQL');
    // An unreachable registry.
    r = await runServerCli(['init', '--data', target, '--join', file, '--registry', 'postgres://nobody@127.0.0.1:1/none']);
    expect(r.code).to.equal(1);
    expect(r.stderr).to.contain('E_STORAGE_UNAVAILABLE');
    await stat(target).then(
      () => expect.fail(`${target} was created`),
      () => undefined,
    );
    // Into a data directory that has keys already.
    r = await runServerCli(['init', '--data', a, '--join', file]);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.contain('E_EXISTS');
  });

  it('keeps server.json 0600 when the registry URL it records carries a password', async () => {
    const d = join(dir, 'pw');
    const withPassword = url.replace('postgres://postgres@', 'postgres://postgres:secret@');
    const r = await runServerCli(['init', '--data', d, '--registry', withPassword, '--broker', 'mqtt://127.0.0.1:1']);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.not.contain('secret');
    expect(await mode(join(d, 'server.json'))).to.equal(0o600);
  });
});

async function jwksFile(dir: string): Promise<string> {
  const { generateEncryptionKey, generateSigningKey, toJwkSet } = await import('../../protocol/index.js');
  const path = join(dir, 'device.jwks');
  await writeFile(path, JSON.stringify(toJwkSet([await generateSigningKey(), await generateEncryptionKey()])));
  return path;
}
