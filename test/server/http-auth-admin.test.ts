/**
 * The admin routes against a real `serve` (aedes, SQLite): operators and API
 * tokens created, changed and removed over HTTP with the CLI's checks and
 * codes, E_LAST_ADMIN, views without hashes, each change audited with `by`.
 */
import { expect } from 'chai';
import { startFixture, type Fixture } from './server-fixture.js';
import { addOperators, ApiClient, PASSWORD } from './http-auth-client.js';

describe('server: HTTP API admin routes (/operators, /api-tokens)', function () {
  this.timeout(30_000);
  let f: Fixture;
  let base: string;
  let ada: ApiClient;

  before(async () => {
    f = await startFixture({ http: { host: '127.0.0.1', port: 0 } });
    base = `http://127.0.0.1:${f.server.http?.port}`;
    await addOperators(f.server.data.storage, { ada: 'admin' });
    ada = new ApiClient(base);
    expect((await ada.login('ada', PASSWORD)).status).to.equal(200);
  });
  after(async () => {
    await f.close();
  });

  const audit = async () => (await f.server.data.storage.audit.log()).filter((e) => e.event.startsWith('operator.')).map((e) => [e.event, e.detail]);

  it("creates, lists, changes and removes operators; refuses bad input with the CLI's codes and changes nothing", async () => {
    const created = await ada.call('POST', '/operators', { body: { name: 'bob', role: 'viewer', password: PASSWORD } });
    expect(created.status).to.equal(201);
    expect(created.body).to.include({ name: 'bob', role: 'viewer', disabled_at: null });
    expect(Object.keys(created.body).sort()).to.deep.equal(['created_at', 'disabled_at', 'name', 'role', 'updated_at']);
    const list = await ada.call('GET', '/operators');
    expect((list.body.operators as { name: string }[]).map((o) => o.name)).to.deep.equal(['ada', 'bob']);
    expect(JSON.stringify(list.body)).to.not.match(/scrypt|hash/);

    const bad: [unknown, number, string][] = [
      [{ name: 'Bob', role: 'viewer', password: PASSWORD }, 400, 'E_BAD_OPERATOR'],
      [{ name: '<script>', role: 'viewer', password: PASSWORD }, 400, 'E_BAD_OPERATOR'],
      [{ name: 'carol', role: 'root', password: PASSWORD }, 400, 'E_BAD_OPERATOR'],
      [{ name: 'carol', role: 'viewer', password: 'short' }, 400, 'E_PASSWORD'],
      [{ name: 'carol', role: 'viewer', password: 12345678901 }, 400, 'E_PASSWORD'],
      [{ name: 'carol', role: 'viewer', password: PASSWORD, admin: true }, 400, 'E_BAD_REQUEST'],
      [{ name: 'bob', role: 'viewer', password: PASSWORD }, 409, 'E_OPERATOR_EXISTS'],
    ];
    for (const [body, status, code] of bad) {
      const a = await ada.call('POST', '/operators', { body });
      expect([a.status, a.body.error?.code], JSON.stringify(body)).to.deep.equal([status, code]);
    }
    const text = await ada.call('POST', '/operators', { body: 'x', headers: { 'content-type': 'text/plain' } });
    expect(text.body.error?.code).to.equal('E_CONTENT_TYPE');
    expect((await f.server.data.storage.operators.list()).map((o) => o.name)).to.deep.equal(['ada', 'bob']);

    const promoted = await ada.call('PATCH', '/operators/bob', { body: { role: 'operator' } });
    expect([promoted.status, promoted.body.role]).to.deep.equal([200, 'operator']);
    const bob = new ApiClient(base);
    expect((await bob.login('bob', PASSWORD)).status).to.equal(200);
    // A new password ends bob's sessions; disabling refuses his login.
    expect((await ada.call('PATCH', '/operators/bob', { body: { password: 'another long password' } })).status).to.equal(200);
    expect((await bob.call('GET', '/session')).status).to.equal(401);
    expect((await bob.login('bob', 'another long password')).status).to.equal(200);
    const disabled = await ada.call('PATCH', '/operators/bob', { body: { disabled: true } });
    expect(disabled.body.disabled_at).to.be.a('string');
    expect((await bob.call('GET', '/session')).status).to.equal(401);
    for (const [body, code] of [
      [{}, 'E_BAD_REQUEST'],
      [{ role: 'root' }, 'E_BAD_OPERATOR'],
      [{ disabled: 'yes' }, 'E_BAD_REQUEST'],
      [{ password: 'short' }, 'E_PASSWORD'],
    ] as const) {
      expect((await ada.call('PATCH', '/operators/bob', { body })).body.error?.code, JSON.stringify(body)).to.equal(code);
    }
    const missing = await ada.call('PATCH', '/operators/nobody', { body: { role: 'viewer' } });
    expect([missing.status, missing.body.error?.code]).to.deep.equal([404, 'E_NO_OPERATOR']);
    expect((await ada.call('DELETE', '/operators/bob')).status).to.equal(204);
    expect((await ada.call('DELETE', '/operators/bob')).body.error?.code).to.equal('E_NO_OPERATOR');

    expect(await audit()).to.deep.equal([
      ['operator.add', { operator: 'ada', role: 'admin', by: 'cli:test' }],
      ['operator.add', { operator: 'bob', role: 'viewer', by: 'ada' }],
      ['operator.role', { operator: 'bob', from: 'viewer', role: 'operator', by: 'ada' }],
      ['operator.passwd', { operator: 'bob', sessions_ended: 1, by: 'ada' }],
      ['operator.disable', { operator: 'bob', sessions_ended: 1, by: 'ada' }],
      ['operator.remove', { operator: 'bob', role: 'operator', tokens_revoked: 0, sessions_ended: 0, by: 'ada' }],
    ]);
  });

  it('keeps the last enabled admin: removing, demoting or disabling it is 409 E_LAST_ADMIN', async () => {
    for (const [method, body] of [
      ['DELETE', undefined],
      ['PATCH', { role: 'operator' }],
      ['PATCH', { disabled: true }],
    ] as const) {
      const a = await ada.call(method, '/operators/ada', body !== undefined ? { body } : {});
      expect([a.status, a.body.error?.code], `${method} ${JSON.stringify(body)}`).to.deep.equal([409, 'E_LAST_ADMIN']);
    }
    expect((await ada.call('GET', '/session')).body).to.deep.equal({ name: 'ada', role: 'admin' });
  });

  it('API tokens: created (its text once), listed without it, used, revoked', async () => {
    await ada.call('POST', '/operators', { body: { name: 'ci', role: 'operator', password: PASSWORD } });
    const created = await ada.call('POST', '/api-tokens', { body: { operator: 'ci', label: 'nightly', ttl_s: 3600 } });
    expect(created.status).to.equal(201);
    const token = created.body.token as string;
    expect(token).to.match(/^[A-Za-z0-9_-]{40,}$/);
    expect(created.body).to.include({ operator: 'ci', label: 'nightly', revoked_at: null });
    expect(Date.parse(created.body.expires_at as string) - Date.parse(created.body.created_at as string)).to.equal(3600_000);
    const list = await ada.call('GET', '/api-tokens?operator=ci');
    expect((list.body.tokens as { id: string }[]).map((t) => t.id)).to.deep.equal([created.body.id]);
    expect(JSON.stringify(list.body)).to.not.include(token);
    expect((await ada.call('GET', '/api-tokens?who=ci')).body.error?.code).to.equal('E_BAD_REQUEST');

    const ci = new ApiClient(base, { bearer: token });
    expect((await ci.call('GET', '/session')).body).to.deep.equal({ name: 'ci', role: 'operator' });
    // An operator's token sees the token listing (no secret in it) but cannot make or revoke one.
    expect((await ci.call('GET', '/api-tokens')).status).to.equal(200);
    expect((await ci.call('POST', '/api-tokens', { body: { operator: 'ci', label: 'more' } })).body.error?.code).to.equal('E_FORBIDDEN');

    for (const [body, code] of [
      [{ operator: 'nobody', label: 'x' }, 'E_NO_OPERATOR'],
      [{ operator: 'ci', label: '' }, 'E_BAD_OPERATOR'],
      [{ operator: 'ci', label: 'a\nb' }, 'E_BAD_OPERATOR'],
      [{ operator: 'ci', label: 'x', ttl_s: 0 }, 'E_BAD_REQUEST'],
      [{ operator: 'ci', label: 'x', ttl_s: 1.5 }, 'E_BAD_REQUEST'],
    ] as const) {
      expect((await ada.call('POST', '/api-tokens', { body })).body.error?.code, JSON.stringify(body)).to.equal(code);
    }
    expect(await f.server.data.storage.operators.listTokens()).to.have.length(1);

    expect((await ada.call('DELETE', `/api-tokens/${String(created.body.id)}`)).status).to.equal(204);
    expect((await ci.call('GET', '/devices')).status).to.equal(401);
    const again = await ada.call('DELETE', `/api-tokens/${String(created.body.id)}`);
    expect([again.status, again.body.error?.code]).to.deep.equal([404, 'E_NO_OPERATOR_TOKEN']);
    const events = (await f.server.data.storage.audit.log()).filter((e) => e.event.startsWith('operator.token.'));
    expect(events.map((e) => [e.event, e.detail.by])).to.deep.equal([
      ['operator.token.create', 'ada'],
      ['operator.token.revoke', 'ada'],
    ]);
  });
});
