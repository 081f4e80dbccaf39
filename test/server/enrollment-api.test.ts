/**
 * Enrollment tokens over real HTTP on a real serve (server/http/enrollment-routes.ts): created (text once),
 * listed (never the text), pending, revoked (audited with by); a real board's enrollment over the broker
 * with a revoked token is refused, with a live one accepted.
 */
import { expect } from 'chai';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { eventually, makeSimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';

type Body = Record<string, unknown> & { error?: { code: string; message: string } };

describe('server: enrollment tokens over HTTP (create, list, pending, revoke)', function () {
  this.timeout(60_000);
  let f: Fixture;
  let base: string;
  let token: string;

  before(async () => {
    f = await startFixture({ http: { host: '127.0.0.1', port: 0 } });
    base = `http://127.0.0.1:${f.server.http?.port}`;
    token = (await readFile(join(f.dataDir, 'http.token'), 'utf8')).trim();
  });
  after(async () => {
    await f.close();
  });

  const call = async (method: string, path: string, body?: unknown): Promise<{ status: number; body: Body; text: string }> => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    return { status: res.status, body: JSON.parse(text) as Body, text };
  };

  it('creates a token (text once), lists it without the text, shows it pending; revoking refuses a real enrollment with it', async () => {
    const created = await call('POST', '/enrollment/tokens', { device_id: 'board-1', user_id: 'alice', ttl_s: 3600 });
    expect(created.status, created.text).to.equal(201);
    const text = created.body.token as string;
    const id = created.body.id as string;
    expect(text).to.be.a('string').with.length.above(20);
    expect(id).to.match(/^[0-9a-f]{16}$/);
    expect(created.body).to.include({ device_id: 'board-1', user_id: 'alice' });
    expect(Date.parse(created.body.expires_at as string) - Date.now()).to.be.within(3_500_000, 3_600_000);

    const list = await call('GET', '/enrollment/tokens');
    expect(list.text).to.not.contain(text);
    expect((list.body.tokens as { id: string; device_id: string; status: string }[]).map((t) => [t.id, t.device_id, t.status])).to.deep.equal([
      [id, 'board-1', 'valid'],
    ]);
    expect(((await call('GET', '/enrollment/tokens?device=other')).body.tokens as unknown[]).length).to.equal(0);
    const pending = await call('GET', '/enrollment/pending');
    expect((pending.body.pending as { device_id: string }[]).map((p) => p.device_id)).to.deep.equal(['board-1']);
    expect(pending.text).to.not.contain(text);

    const revoked = await call('DELETE', `/enrollment/tokens/${id}`);
    expect(revoked.status, revoked.text).to.equal(200);
    expect(revoked.body).to.include({ id, device_id: 'board-1', status: 'revoked' });
    expect(((await call('GET', '/enrollment/pending')).body.pending as unknown[]).length).to.equal(0);
    const audit = (await call('GET', '/audit?device=board-1')).body.audit as { event: string; detail: Record<string, unknown> }[];
    expect(audit.map((a) => [a.event, a.detail.by, a.detail.token_id])).to.deep.equal([
      ['token.create', 'http-token', id],
      ['token.revoke', 'http-token', id],
    ]);
    const again = await call('DELETE', `/enrollment/tokens/${id}`);
    expect([again.status, again.body.error?.code]).to.deep.equal([404, 'E_NO_TOKEN']);

    // A real board enrolling over the broker with the revoked token: refused, not registered.
    const board = f.fleet.add(await makeSimDevice('board-1'));
    await f.fleet.enroll(board, text);
    await eventually(() => f.inbound.find((r) => r.kind === 'dropped' && r.code === 'E_TOKEN_REVOKED'), 10_000, 'enrollment refused E_TOKEN_REVOKED');
    expect(await f.server.data.storage.devices.get('board-1')).to.equal(undefined);

    // A new token: the same board enrolls.
    const fresh = await call('POST', '/enrollment/tokens', { device_id: 'board-1', user_id: 7 });
    expect([fresh.status, fresh.body.user_id]).to.deep.equal([201, '7']);
    await f.fleet.enroll(board, fresh.body.token as string);
    await eventually(async () => (await f.server.data.storage.devices.get('board-1'))?.userId === '7', 10_000, 'board-1 enrolled');
    const used = await call('DELETE', `/enrollment/tokens/${fresh.body.id as string}`);
    expect([used.status, used.body.error?.code]).to.deep.equal([400, 'E_TOKEN_USED']);
  });

  it('refuses bad requests with 400 naming the problem, and changes nothing', async () => {
    const before = await f.server.data.storage.audit.lastId();
    const tokensBefore = (await f.server.data.storage.enrollment.listTokens()).length;
    const bad: [string, string, unknown, string][] = [
      ['POST', '/enrollment/tokens', { device_id: '<script>', user_id: 'a' }, 'device id'],
      ['POST', '/enrollment/tokens', { device_id: 'b-2' }, 'user_id'],
      ['POST', '/enrollment/tokens', { device_id: 'b-2', user_id: 'a', ttl_s: 10 }, 'ttl_s'],
      ['POST', '/enrollment/tokens', { device_id: 'b-2', user_id: 'a', ttl_s: '1h' }, 'ttl_s'],
      ['POST', '/enrollment/tokens', { device_id: 'b-2', user_id: 'a', extra: true }, 'extra'],
      ['POST', '/enrollment/tokens', [], 'JSON object'],
      ['GET', '/enrollment/tokens?colour=1', undefined, 'colour'],
      ['GET', '/enrollment/tokens?device=%3Cb%3E', undefined, 'device'],
      ['GET', '/enrollment/pending?x=1', undefined, 'x'],
      ['DELETE', '/enrollment/tokens/not-an-id', undefined, 'hex'],
    ];
    for (const [method, path, body, name] of bad) {
      const r = await call(method, path, body);
      expect([r.status, r.body.error?.code], `${method} ${path}`).to.deep.equal([400, 'E_BAD_REQUEST']);
      expect(r.body.error?.message, `${method} ${path}`).to.contain(name);
    }
    expect((await call('PUT', '/enrollment/tokens')).status).to.equal(405);
    expect((await call('GET', '/enrollment/other')).status).to.equal(404);
    // (The first test's board may still be acking its request: only what these requests would write is checked.)
    const storage = f.server.data.storage;
    expect(await storage.audit.eventsSince(before, await storage.audit.lastId(), 'token.', 10)).to.deep.equal([]);
    expect((await storage.enrollment.listTokens()).length).to.equal(tokensBefore);
  });
});
