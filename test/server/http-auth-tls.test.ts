/**
 * `serve --http-tls-cert/--http-tls-key`: the API over HTTPS with a self-signed
 * certificate (openssl), Secure session cookies, the https origin for CSRF, HSTS;
 * a key file readable by others is refused (E_KEY_PERMS) before the broker is
 * contacted, and the CLI refuses a certificate without its key (E_USAGE).
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initDataDir } from '../../server/data-dir.js';
import { startProvisionServer } from '../../server/service.js';
import { isCodedError } from '../../protocol/index.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { addOperators, legacyToken, PASSWORD } from './http-auth-client.js';
import { runServerCli } from './run-cli.js';

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

describe('server: HTTP API over TLS (serve --http-tls-cert/--http-tls-key)', function () {
  this.timeout(30_000);
  let dir: string;
  let cert: string;
  let key: string;
  let ca: Buffer;
  let f: Fixture;
  let port: number;

  const call = (method: string, path: string, headers: Record<string, string> = {}, body?: unknown): Promise<Answer> =>
    new Promise((resolve, reject) => {
      const text = body === undefined ? undefined : JSON.stringify(body);
      const req = request(
        { host: '127.0.0.1', port, path, method, ca, headers: { ...headers, ...(text !== undefined ? { 'content-type': 'application/json' } : {}) } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        },
      );
      req.on('error', reject);
      req.end(text);
    });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'http-tls-'));
    cert = join(dir, 'cert.pem');
    key = join(dir, 'key.pem');
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-keyout',
        key,
        '-out',
        cert,
        '-days',
        '2',
        '-subj',
        '/CN=127.0.0.1',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
      ],
      { stdio: 'ignore' },
    );
    await chmod(key, 0o600);
    ca = await readFile(cert);
    f = await startFixture({ http: { host: '127.0.0.1', port: 0 }, httpTls: { cert, key } });
    port = f.server.http?.port as number;
    await addOperators(f.server.data.storage, { otto: 'operator' });
  });
  after(async () => {
    await f?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('answers over HTTPS: the legacy token works, a login cookie is Secure, HSTS is sent; the https origin is its own', async () => {
    const legacy = await call('GET', '/devices', { authorization: `Bearer ${await legacyToken(f.dataDir)}` });
    expect(legacy.status).to.equal(200);
    expect(legacy.headers['strict-transport-security']).to.equal('max-age=31536000');
    const login = await call('POST', '/session', { 'x-console': '1', origin: `https://127.0.0.1:${port}` }, { name: 'otto', password: PASSWORD });
    expect(login.status, login.body).to.equal(200);
    const set = (login.headers['set-cookie'] as string[])[0] as string;
    expect(set).to.match(/^psid=[A-Za-z0-9_-]+; HttpOnly; SameSite=Strict; Path=\/; Secure$/);
    const cookie = set.split(';')[0] as string;
    expect(JSON.parse((await call('GET', '/session', { cookie })).body)).to.deep.equal({ name: 'otto', role: 'operator' });
    // The http:// origin of the same host and port is another origin.
    const plain = await call('PUT', '/devices/x/tags/t', { cookie, 'x-console': '1', origin: `http://127.0.0.1:${port}` });
    expect([plain.status, (JSON.parse(plain.body) as { error: { code: string } }).error.code]).to.deep.equal([403, 'E_CSRF']);
    const out = await call('DELETE', '/session', { cookie, 'x-console': '1' });
    expect(out.status).to.equal(204);
    expect((out.headers['set-cookie'] as string[])[0]).to.equal('psid=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0; Secure');
  });

  it('refuses a key file readable by others (E_KEY_PERMS), before contacting the broker', async () => {
    const data = join(dir, 'data2');
    await initDataDir(data, { broker: { url: 'mqtt://127.0.0.1:1' } });
    await chmod(key, 0o644);
    try {
      await startProvisionServer({ dataDir: data, http: { host: '127.0.0.1', port: 0 }, httpTls: { cert, key } });
      expect.fail('serve started with a key readable by others');
    } catch (err) {
      expect(isCodedError(err) && err.code).to.equal('E_KEY_PERMS');
      expect((err as Error).message).to.include('chmod 600');
    } finally {
      await chmod(key, 0o600);
    }
    try {
      await startProvisionServer({ dataDir: data, http: { host: '127.0.0.1', port: 0 }, httpTls: { cert: join(dir, 'none.pem'), key } });
      expect.fail('serve started without its certificate');
    } catch (err) {
      expect(isCodedError(err) && err.code).to.equal('E_NO_FILE');
    }
  });

  it('the CLI: --http-tls-cert without --http-tls-key is a usage error; --help names the new flags', async () => {
    const r = await runServerCli(['serve', '--data', join(dir, 'data2'), '--http', '0', '--http-tls-cert', cert]);
    expect(r.code, r.stderr).to.equal(2);
    expect(r.stderr).to.include('--http-tls-cert and --http-tls-key go together');
    const help = await runServerCli(['serve', '--help']);
    for (const flag of ['--http-tls-cert', '--http-tls-key', '--session-idle', '--session-max']) expect(help.stdout).to.include(flag);
  });
});
