/**
 * The HTTP API's authentication against a real `serve` (aedes, SQLite): console
 * sessions (cookie flags, logout, idle and absolute expiry on an injected clock),
 * the login rate limit and its Retry-After, CSRF refusals, the role table (each
 * role's allowed and refused routes), the legacy token and operator API tokens,
 * and the security headers of every answer.
 */
import { expect } from 'chai';
import { toPublicJwk } from '../../protocol/index.js';
import { ROLE_TABLE, requiredRole } from '../../server/http/auth-roles.js';
import { makeSimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { addOperators, ApiClient, legacyToken, PASSWORD } from './http-auth-client.js';

const IDLE_MS = 60_000;
const MAX_MS = 300_000;

describe('server: HTTP API authentication, sessions, roles, CSRF', function () {
  this.timeout(30_000);
  let f: Fixture;
  let base: string;
  let clock: number;

  before(async () => {
    clock = Date.now();
    f = await startFixture({ http: { host: '127.0.0.1', port: 0 }, sessions: { idleMs: IDLE_MS, absoluteMs: MAX_MS }, now: () => clock });
    base = `http://127.0.0.1:${f.server.http?.port}`;
    await addOperators(f.server.data.storage, { vera: 'viewer', otto: 'operator', ada: 'admin', dora: 'operator' });
    const d = f.fleet.add(await makeSimDevice('auth-1'));
    await f.server.data.storage.devices.add({
      id: 'auth-1',
      userId: 'u1',
      origin: 'jwks',
      signing: toPublicJwk(d.signing),
      encryption: toPublicJwk(d.encryption),
      state: 'provisioned',
    });
  });
  after(async () => {
    await f.close();
  });

  const session = async (name: string): Promise<ApiClient> => {
    const c = new ApiClient(base);
    const a = await c.login(name, PASSWORD);
    expect(a.status, JSON.stringify(a.body)).to.equal(200);
    return c;
  };

  it('logs in with a cookie that is HttpOnly, SameSite=Strict, Path=/ (not Secure without TLS); GET /session; logout ends it', async () => {
    const c = new ApiClient(base);
    const a = await c.login('vera', PASSWORD);
    expect(a.status).to.equal(200);
    expect(a.body).to.include({ name: 'vera', role: 'viewer', idle_ms: IDLE_MS });
    expect(Date.parse(a.body.expires_at as string)).to.equal(clock + MAX_MS);
    const set = a.headers.get('set-cookie') as string;
    expect(set).to.match(/^psid=[A-Za-z0-9_-]{40,}; HttpOnly; SameSite=Strict; Path=\/$/);
    expect((await c.call('GET', '/session')).body).to.deep.equal({ name: 'vera', role: 'viewer' });
    expect((await c.call('GET', '/devices')).status).to.equal(200);
    // Logout is a change: it needs the console header too.
    const noHeader = await c.call('DELETE', '/session', { console: false });
    expect([noHeader.status, noHeader.body.error?.code]).to.deep.equal([403, 'E_CSRF']);
    const out = await c.call('DELETE', '/session');
    expect(out.status).to.equal(204);
    expect(out.headers.get('set-cookie')).to.equal('psid=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0');
    const after = await c.call('GET', '/session');
    expect([after.status, after.body.error?.code]).to.deep.equal([401, 'E_UNAUTHORIZED']);
    expect((await c.call('GET', '/devices')).status).to.equal(401);
    const events = (await f.server.data.storage.audit.log()).map((e) => e.event);
    expect(events).to.include.members(['session.create', 'session.end']);
  });

  it('refuses a wrong password and an unknown name with the same 401 E_LOGIN, in similar time (dummy hash)', async () => {
    const c = new ApiClient(base);
    const time = async (name: string): Promise<number> => {
      const t0 = process.hrtime.bigint();
      const a = await c.login(name, 'wrong password!');
      expect([a.status, a.body.error?.code, a.body.error?.message]).to.deep.equal([401, 'E_LOGIN', 'wrong name or password']);
      expect(a.headers.get('set-cookie')).to.equal(null);
      return Number(process.hrtime.bigint() - t0) / 1e6;
    };
    await time('nobody-warmup'); // the dummy hash is computed once, at the first unknown name
    const known: number[] = [];
    const unknown: number[] = [];
    for (let i = 0; i < 3; i++) {
      known.push(await time('dora'));
      unknown.push(await time(`nobody${i}`));
    }
    const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[1] as number;
    // scrypt takes tens of ms: an unknown name that skipped it would answer in ~1 ms.
    expect(median(unknown)).to.be.greaterThan(median(known) / 3);
    expect(median(unknown)).to.be.lessThan(median(known) * 3);
    // Not a string, extra members, no console header: refused before any check.
    expect((await c.call('POST', '/session', { console: true, body: { name: 'dora' } })).body.error?.code).to.equal('E_BAD_REQUEST');
    expect((await c.call('POST', '/session', { console: true, body: { name: 'dora', password: PASSWORD, x: 1 } })).body.error?.code).to.equal('E_BAD_REQUEST');
    const noHeader = await c.login('dora', PASSWORD, { console: false });
    expect([noHeader.status, noHeader.body.error?.code]).to.deep.equal([403, 'E_CSRF']);
    const foreign = await c.login('dora', PASSWORD, { headers: { origin: 'http://evil.example' } });
    expect([foreign.status, foreign.body.error?.code]).to.deep.equal([403, 'E_CSRF']);
    expect(c.cookie).to.equal(undefined);
    // A disabled operator cannot log in (same answer).
    await f.server.data.storage.operators.setDisabled('dora', true, 'cli:test');
    expect((await c.login('dora', PASSWORD)).body.error?.code).to.equal('E_LOGIN');
    await f.server.data.storage.operators.setDisabled('dora', false, 'cli:test');
  });

  it('a session ends after the idle time without requests, and at the absolute limit however busy (injected clock)', async () => {
    const idle = await session('vera');
    clock += IDLE_MS - 1000;
    expect((await idle.call('GET', '/devices')).status).to.equal(200); // moves the idle deadline
    clock += IDLE_MS - 1000;
    expect((await idle.call('GET', '/devices')).status).to.equal(200);
    clock += IDLE_MS + 1;
    const ended = await idle.call('GET', '/devices');
    expect([ended.status, ended.body.error?.code]).to.deep.equal([401, 'E_UNAUTHORIZED']);
    expect(ended.body.error?.message).to.match(/session has ended/);

    const busy = await session('vera');
    const start = clock;
    while (clock + 30_000 < start + MAX_MS) {
      clock += 30_000;
      expect((await busy.call('GET', '/session')).status).to.equal(200);
    }
    clock = start + MAX_MS;
    expect((await busy.call('GET', '/session')).status).to.equal(401);
  });

  it('each role: viewer reads only, operator sends and runs rollouts, admin manages operators (403 E_FORBIDDEN)', async () => {
    const vera = await session('vera');
    const otto = await session('otto');
    const ada = await session('ada');
    const rollout = { action: 'selftest', selector: { devices: ['auth-1'] }, dry_run: true };

    // A viewer sees everything: the operators, the token listings and the enrollments too (no secret is in any GET).
    for (const path of [
      '/devices',
      '/devices/auth-1',
      '/tags',
      '/rollouts',
      '/audit',
      '/releases',
      '/session',
      '/operators',
      '/api-tokens',
      '/enrollment/tokens',
    ]) {
      expect((await vera.call('GET', path)).status, path).to.equal(200);
    }
    const refusals: [string, string, unknown][] = [
      ['POST', '/devices/auth-1/commands', { action: 'selftest' }],
      ['PUT', '/devices/auth-1/tags/lab', undefined],
      ['DELETE', '/devices/auth-1/tags/lab', undefined],
      ['POST', '/rollouts', rollout],
      ['POST', '/rollouts/r-1/pause', undefined],
      ['POST', '/rollouts/r-1/retry', {}],
      ['POST', '/operators', { name: 'mallory', role: 'admin', password: 'a-long-enough-password' }],
      ['DELETE', '/api-tokens/t-1', undefined],
      ['POST', '/enrollment/tokens', { device_id: 'auth-9', user_id: 'u' }],
    ];
    for (const [method, path, body] of refusals) {
      const a = await vera.call(method, path, body !== undefined ? { body } : {});
      expect([a.status, a.body.error?.code], `${method} ${path}`).to.deep.equal([403, 'E_FORBIDDEN']);
      expect(a.body.error?.message).to.match(/^role viewer may not /);
    }
    expect(await f.server.data.storage.commands.list({ deviceId: 'auth-1' })).to.have.length(0);
    expect(await f.server.data.storage.devices.tagsOf('auth-1')).to.deep.equal([]);

    const sent = await otto.call('POST', '/devices/auth-1/commands', { body: { action: 'selftest' } });
    expect(sent.status, JSON.stringify(sent.body)).to.equal(202);
    expect((await otto.call('PUT', '/devices/auth-1/tags/lab')).status).to.equal(200);
    expect((await otto.call('POST', '/rollouts', { body: rollout })).status).to.equal(200);
    for (const [method, path] of [
      ['POST', '/operators'],
      ['POST', '/api-tokens'],
      ['POST', '/enrollment/tokens'],
    ] as const) {
      const a = await otto.call(method, path, { body: {} });
      expect([a.status, a.body.error?.code], path).to.deep.equal([403, 'E_FORBIDDEN']);
      expect(a.body.error?.message).to.match(/^role operator may not manage/);
    }
    // An unknown route needs admin (closed by default): an admin gets the 404.
    expect((await otto.call('POST', '/nowhere')).status).to.equal(403);
    expect((await ada.call('POST', '/nowhere')).status).to.equal(404);
    expect((await ada.call('GET', '/nowhere')).status).to.equal(404);
    expect((await ada.call('GET', '/devices')).status).to.equal(200);
  });

  it("the role table: every GET is a viewer's, the changes listed are an operator's, the rest an admin's", () => {
    const need = (method: string, path: string): string => requiredRole(method, path.split('/').filter(Boolean)).role;
    expect(need('GET', '/devices')).to.equal('viewer');
    expect(need('GET', '/events')).to.equal('viewer');
    expect(need('GET', '/operators')).to.equal('viewer');
    expect(need('GET', '/enrollment/pending')).to.equal('viewer');
    expect(need('POST', '/operators')).to.equal('admin');
    expect(need('PATCH', '/operators/x')).to.equal('admin');
    expect(need('POST', '/enrollment/tokens')).to.equal('admin');
    expect(need('DELETE', '/api-tokens/x')).to.equal('admin');
    expect(need('POST', '/devices/tags')).to.equal('operator');
    expect(need('POST', '/devices/a/commands')).to.equal('operator');
    expect(need('POST', '/devices/a/commands/x')).to.equal('admin');
    expect(need('POST', '/rollouts/r/cancel')).to.equal('operator');
    expect(need('POST', '/rollouts/r/frobnicate')).to.equal('admin');
    expect(need('DELETE', '/devices/a')).to.equal('admin');
    expect(ROLE_TABLE.filter((r) => r.role === 'viewer').every((r) => r.methods !== '*' && r.methods.every((m) => m === 'GET'))).to.equal(true);
  });

  it("CSRF: a cookie session's change without X-Console, or from a foreign Origin, is 403 E_CSRF and changes nothing", async () => {
    const otto = await session('otto');
    const noHeader = await otto.call('PUT', '/devices/auth-1/tags/csrf', { console: false });
    expect([noHeader.status, noHeader.body.error?.code]).to.deep.equal([403, 'E_CSRF']);
    const foreign = await otto.call('PUT', '/devices/auth-1/tags/csrf', { headers: { origin: 'http://evil.example' } });
    expect([foreign.status, foreign.body.error?.code]).to.deep.equal([403, 'E_CSRF']);
    const wrongValue = await otto.call('PUT', '/devices/auth-1/tags/csrf', { headers: { 'x-console': 'yes' } });
    expect(wrongValue.body.error?.code).to.equal('E_CSRF');
    expect(await f.server.data.storage.devices.tagsOf('auth-1')).to.not.include('csrf');
    // The same origin is fine; a GET needs no header.
    const own = await otto.call('PUT', '/devices/auth-1/tags/csrf', { headers: { origin: base } });
    expect(own.status).to.equal(200);
    expect((await otto.call('GET', '/devices', { console: false })).status).to.equal(200);
    // No CORS is ever answered.
    expect(own.headers.get('access-control-allow-origin')).to.equal(null);
  });

  it('the legacy token is an admin; an operator API token works with its role until revoked or its operator disabled', async () => {
    const legacy = new ApiClient(base, { bearer: await legacyToken(f.dataDir) });
    expect((await legacy.call('GET', '/devices')).status).to.equal(200);
    expect((await legacy.call('GET', '/operators')).status).to.equal(200);
    expect((await legacy.call('GET', '/session')).body).to.deep.equal({ name: 'http-token', role: 'admin' });
    // Bearer requests are no browser's ambient authority: no console header needed.
    expect((await legacy.call('PUT', '/devices/auth-1/tags/legacy', { console: false })).status).to.equal(200);

    const { token, record } = await f.server.data.storage.operators.createToken('otto', 'ci', null, 'cli:test');
    const ci = new ApiClient(base, { bearer: token });
    expect((await ci.call('GET', '/session')).body).to.deep.equal({ name: 'otto', role: 'operator' });
    expect((await ci.call('PUT', '/devices/auth-1/tags/ci')).status).to.equal(200);
    expect((await ci.call('DELETE', '/operators/vera')).body.error?.code).to.equal('E_FORBIDDEN');
    await f.server.data.storage.operators.setDisabled('otto', true, 'cli:test');
    expect((await ci.call('GET', '/devices')).status).to.equal(401);
    await f.server.data.storage.operators.setDisabled('otto', false, 'cli:test');
    expect((await ci.call('GET', '/devices')).status).to.equal(200);
    await f.server.data.storage.operators.revokeToken(record.id, 'cli:test');
    const revoked = await ci.call('GET', '/devices');
    expect([revoked.status, revoked.body.error?.code]).to.deep.equal([401, 'E_UNAUTHORIZED']);
    expect((await new ApiClient(base, { bearer: `${token}x` }).call('GET', '/devices')).status).to.equal(401);
  });

  it('every answer carries the security headers: nosniff, CSP default-src none, no-store, no framing', async () => {
    const legacy = new ApiClient(base, { bearer: await legacyToken(f.dataDir) });
    for (const a of [await legacy.call('GET', '/devices'), await legacy.call('GET', '/nowhere'), await new ApiClient(base).call('GET', '/devices')]) {
      expect(a.headers.get('x-content-type-options')).to.equal('nosniff');
      expect(a.headers.get('content-security-policy')).to.equal("default-src 'none'; frame-ancestors 'none'");
      expect(a.headers.get('cache-control')).to.equal('no-store');
      expect(a.headers.get('x-frame-options')).to.equal('DENY');
      expect(a.headers.get('referrer-policy')).to.equal('no-referrer');
    }
  });

  // Last: it uses up the client address's failures (every test client is 127.0.0.1).
  it('rate-limits logins: 5 failures for a name, or 20 from an address, in 15 min -> 429 E_RATE_LIMITED with Retry-After', async () => {
    const c = new ApiClient(base);
    clock += 15 * 60_000; // the failures of the tests before are out of the window
    // A success resets the name's count.
    for (let i = 0; i < 4; i++) expect((await c.login('dora', 'wrong password!')).status).to.equal(401);
    expect((await c.login('dora', PASSWORD)).status).to.equal(200);
    for (let i = 0; i < 5; i++) expect((await c.login('dora', 'wrong password!')).status).to.equal(401);
    clock += 60_000;
    const limited = await c.login('dora', PASSWORD);
    expect([limited.status, limited.body.error?.code]).to.deep.equal([429, 'E_RATE_LIMITED']);
    expect(Number(limited.headers.get('retry-after'))).to.equal(15 * 60 - 60);
    // Another name from the same address is not limited yet.
    expect((await c.login('vera', PASSWORD)).status).to.equal(200);
    clock += 15 * 60_000 - 60_000 + 1;
    expect((await c.login('dora', PASSWORD)).status).to.equal(200);

    clock += 15 * 60_000; // every earlier failure is out of the window
    for (let i = 0; i < 20; i++) expect((await c.login(`guess${i}`, 'wrong password!')).status).to.equal(401);
    const byAddress = await c.login('ada', PASSWORD);
    expect([byAddress.status, byAddress.body.error?.code]).to.deep.equal([429, 'E_RATE_LIMITED']);
    expect(Number(byAddress.headers.get('retry-after'))).to.be.within(1, 15 * 60);
    clock += 15 * 60_000;
    expect((await c.login('ada', PASSWORD)).status).to.equal(200);
  });
});
