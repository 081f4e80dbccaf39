/**
 * The console's static files from a real `serve --http`: redirects, content
 * types, the console CSP and headers, no auth needed, path traversal (dot
 * segments raw and percent-encoded, encoded slashes, hidden files, a symbolic
 * link out of the directory) refused, and a clear 404 when it is not built.
 */
import { expect } from 'chai';
import { mkdir, rename, symlink, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { CONSOLE_CSP } from '../../server/http/security-headers.js';
import { startFixture, type Fixture } from './server-fixture.js';

/** A raw GET whose target is sent as written (fetch would normalize the dot segments away). */
function rawGet(port: number, target: string, method = 'GET'): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: target, method }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe("server: the console's static files (/console/)", function () {
  this.timeout(30_000);
  let f: Fixture;
  let port: number;
  let dir: string;

  before(async () => {
    const root = join(process.env.TMPDIR ?? '/tmp', `console-static-${process.pid}-${Date.now()}`);
    dir = join(root, 'console');
    await mkdir(join(dir, 'img'), { recursive: true });
    await writeFile(join(dir, 'index.html'), '<!doctype html><title>console</title><script src="app.js"></script>');
    await writeFile(join(dir, 'app.js'), 'console.log(1);');
    await writeFile(join(dir, 'app.css'), 'body{}');
    await writeFile(join(dir, 'img', 'logo.svg'), '<svg xmlns="http://www.w3.org/2000/svg"/>');
    await writeFile(join(dir, '.hidden'), 'HIDDEN-CONTENT');
    await writeFile(join(root, 'secret.txt'), 'SECRET');
    await symlink(join(root, 'secret.txt'), join(dir, 'link.txt'));
    f = await startFixture({ http: { host: '127.0.0.1', port: 0 }, consoleDir: dir });
    port = f.server.http?.port as number;
  });
  after(async () => {
    await f.close();
  });

  it('redirects / and /console to /console/, serves index.html and the built files without auth, with their types and the console CSP', async () => {
    for (const target of ['/', '/console']) {
      const r = await rawGet(port, target);
      expect([r.status, r.headers.location], target).to.deep.equal([302, '/console/']);
    }
    const expected: [string, string, string][] = [
      ['/console/', 'text/html; charset=utf-8', '<!doctype html>'],
      ['/console/app.js', 'text/javascript; charset=utf-8', 'console.log'],
      ['/console/app.css', 'text/css; charset=utf-8', 'body{}'],
      ['/console/img/logo.svg', 'image/svg+xml', '<svg'],
    ];
    for (const [target, type, start] of expected) {
      const r = await rawGet(port, target);
      expect([r.status, r.headers['content-type']], target).to.deep.equal([200, type]);
      expect(r.body.startsWith(start), target).to.equal(true);
      expect(r.headers['content-security-policy']).to.equal(CONSOLE_CSP);
      expect(r.headers['x-content-type-options']).to.equal('nosniff');
      expect(r.headers['referrer-policy']).to.equal('no-referrer');
      expect(r.headers['x-frame-options']).to.equal('DENY');
    }
    expect(CONSOLE_CSP).to.not.include('unsafe-inline');
    const head = await rawGet(port, '/console/app.js', 'HEAD');
    expect([head.status, head.headers['content-length'], head.body]).to.deep.equal([200, '15', '']);
    expect((await rawGet(port, '/console/app.js', 'POST')).status).to.equal(405);
  });

  it('refuses path traversal, encoded slashes, hidden files and a link out of the directory (404, never the file)', async () => {
    for (const target of [
      '/console/%2e%2e/secret.txt',
      '/console/..%2fsecret.txt',
      '/console/img/..%5c..%5csecret.txt',
      '/console/%2e%2e%2fsecret.txt',
      '/console/.hidden',
      '/console/link.txt',
      '/console/img',
      '/console/nothing.js',
      '/console/app.js%00.css',
    ]) {
      const r = await rawGet(port, target);
      // 401: the URL parser resolved a dot segment out of /console/, to an API path that needs auth.
      expect(r.status, target).to.be.oneOf([400, 401, 404]);
      expect(r.body, target).to.not.include('SECRET');
      expect(r.body, target).to.not.include('HIDDEN-CONTENT');
    }
    // The raw "../" target is resolved by the URL parser to /secret.txt, an API route: it needs auth.
    expect((await rawGet(port, '/console/../secret.txt')).status).to.equal(401);
  });

  it('answers 404 E_NO_CONSOLE saying how to build it when dist/console is missing', async () => {
    await rename(dir, `${dir}-moved`);
    try {
      const r = await rawGet(port, '/console/');
      expect(r.status).to.equal(404);
      const body = JSON.parse(r.body) as { error: { code: string; message: string } };
      expect(body.error.code).to.equal('E_NO_CONSOLE');
      expect(body.error.message).to.match(/not built.*npm run build/);
    } finally {
      await rename(`${dir}-moved`, dir);
    }
  });
});
