import { expect } from 'chai';
import { readFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { toPublicJwk } from '../../protocol/index.js';
import { eventually, makeSimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { sqliteDb } from '../helpers/sqlite-db.js';

describe('server: HTTP API', function () {
  let f: Fixture;
  let base: string;
  let token: string;

  before(async () => {
    f = await startFixture({ http: { host: '127.0.0.1', port: 0 }, shared: 'auto' });
    base = `http://127.0.0.1:${f.server.http?.port}`;
    token = (await readFile(join(f.dataDir, 'http.token'), 'utf8')).trim();
    const d = f.fleet.add(await makeSimDevice('http-1'));
    await f.server.data.storage.devices.add({
      id: 'http-1',
      userId: 'alice',
      origin: 'jwks',
      signing: toPublicJwk(d.signing),
      encryption: toPublicJwk(d.encryption),
      state: 'provisioned',
    });
  });
  after(async () => {
    await f.close();
  });

  const call = async (method: string, path: string, body?: string, headers: Record<string, string> = {}) => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...headers },
      ...(body !== undefined ? { body } : {}),
    });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> & { error?: { code: string; message: string } } };
  };

  it('listens on loopback only, and on aedes (no shared subscriptions) falls back to plain ones', () => {
    expect(f.server.http?.host).to.equal('127.0.0.1');
    expect(f.server.shared).to.equal(false);
  });

  it('refuses a missing or wrong bearer token with 401', async () => {
    const none = await fetch(`${base}/devices`);
    expect(none.status).to.equal(401);
    expect(none.headers.get('www-authenticate')).to.equal('Bearer');
    expect(((await none.json()) as { error: { code: string } }).error.code).to.equal('E_UNAUTHORIZED');
    const wrong = await call('GET', '/devices', undefined, { authorization: `Bearer ${token}x` });
    expect(wrong.status).to.equal(401);
    const post = await call('POST', '/devices/http-1/commands', '{"action":"selftest"}', { authorization: 'Basic abc' });
    expect(post.status).to.equal(401);
    expect(await f.server.data.storage.commands.list({ deviceId: 'http-1' })).to.have.length(0);
  });

  it('answers malformed requests with 4xx and a JSON error, sending nothing', async () => {
    expect((await call('POST', '/devices/http-1/commands', '{"action":')).body.error?.code).to.equal('E_BAD_JSON');
    expect((await call('POST', '/devices/http-1/commands', '{"action":')).status).to.equal(400);
    expect((await call('POST', '/devices/http-1/commands', '[]')).status).to.equal(400);
    expect((await call('POST', '/devices/http-1/commands', '{"action":"reboot"}')).body.error?.code).to.equal('E_ACTION');
    expect((await call('POST', '/devices/http-1/commands', '{"action":"update","params":{"sensor":{"enabled":"yes"}}}')).body.error?.code).to.equal('E_PARAMS');
    expect((await call('POST', '/devices/http-1/commands', '{"action":"update","extra":1}')).status).to.equal(400);
    expect((await call('POST', '/devices/http-1/commands', 'x'.repeat(70 * 1024))).status).to.equal(413);
    expect((await call('POST', '/devices/http-1/commands', '{"action":"selftest"}', { 'content-type': 'text/plain' })).status).to.equal(415);
    expect((await call('DELETE', '/devices/http-1')).status).to.equal(405);
    expect((await call('GET', '/nothing')).status).to.equal(404);
    expect((await call('GET', '/devices/bad%20id')).status).to.equal(400);
    expect(await f.server.data.storage.commands.list({ deviceId: 'http-1' })).to.have.length(0);
  });

  it('404 for an unknown device or command', async () => {
    const r = await call('POST', '/devices/nobody/commands', '{"action":"selftest","user_id":"alice"}');
    expect(r.status).to.equal(404);
    expect(r.body.error?.code).to.equal('E_NO_DEVICE');
    expect((await call('GET', '/devices/nobody')).status).to.equal(404);
    expect((await call('GET', '/commands/00000000-0000-4000-8000-000000000000')).status).to.equal(404);
  });

  it('happy path: 202 with the jti, then the command reaches status applied', async () => {
    const r = await call(
      'POST',
      '/devices/http-1/commands',
      JSON.stringify({ action: 'update', user_id: 'alice', params: { reporting: { interval_s: 120 } } }),
    );
    expect(r.status).to.equal(202);
    expect(r.body).to.include({ device_id: 'http-1', action: 'update', status: 'accepted' });
    const jti = r.body.jti as string;
    expect(jti).to.match(/^[0-9a-f-]{36}$/);
    const done = await eventually(
      async () => {
        const s = await call('GET', `/commands/${jti}`);
        return s.body.status === 'applied' && s.body;
      },
      10_000,
      'command applied',
    );
    expect(done).to.include({ jti, device_id: 'http-1', code: 'OK', user_id: 'alice' });
    const device = await call('GET', '/devices/http-1');
    expect(device.body).to.include({ id: 'http-1', state: 'provisioned', user_id: 'alice', next_seq: 2 });
    const list = await call('GET', '/devices');
    expect((list.body.devices as { id: string }[]).map((d) => d.id)).to.deep.equal(['http-1']);
  });

  it("takes the seed's numeric user ids: user_id 8 re-binds with an update, params.user_id 9 too", async () => {
    const rebind = await call('POST', '/devices/http-1/commands', JSON.stringify({ action: 'update', user_id: 8 }));
    expect(rebind.status, JSON.stringify(rebind.body)).to.equal(202);
    const first = await eventually(
      async () => {
        const s = await call('GET', `/commands/${rebind.body.jti as string}`);
        return s.body.status === 'applied' && s.body;
      },
      10_000,
      'rebind applied',
    );
    expect(first).to.include({ user_id: '8' });
    expect((await call('GET', '/devices/http-1')).body).to.include({ user_id: '8' });
    const viaParams = await call('POST', '/devices/http-1/commands', JSON.stringify({ action: 'update', params: { user_id: 9 } }));
    expect(viaParams.status, JSON.stringify(viaParams.body)).to.equal(202);
    await eventually(async () => (await call('GET', `/commands/${viaParams.body.jti as string}`)).body.status === 'applied', 10_000, 'second applied');
    expect((await call('GET', '/devices/http-1')).body).to.include({ user_id: '9' });
    expect((await call('POST', '/devices/http-1/commands', JSON.stringify({ action: 'update', user_id: -1 }))).status).to.equal(400);
    expect((await call('POST', '/devices/http-1/commands', JSON.stringify({ action: 'update', user_id: 1.5 }))).status).to.equal(400);
  });

  it('409 and nothing sent for a decommissioned device (no key)', async () => {
    sqliteDb(f.server.data.storage).prepare("UPDATE devices SET state = 'decommissioned' WHERE id = 'http-1'").run();
    const before = (await f.server.data.storage.commands.list({ deviceId: 'http-1' })).length;
    const r = await call('POST', '/devices/http-1/commands', '{"action":"selftest"}');
    expect(r.status).to.equal(409);
    expect(r.body.error?.code).to.equal('E_DECOMMISSIONED');
    expect(await f.server.data.storage.commands.list({ deviceId: 'http-1' })).to.have.length(before);
  });
  it('answers malformed request targets (bad percent-encoding, non-path targets) with 400 E_BAD_PATH, never 500', async () => {
    /** Sends `target` verbatim (no URL normalisation by a client library). */
    const raw = (method: string, target: string, body?: string, headers: Record<string, string> = {}): Promise<{ status: number; code: string | undefined }> =>
      new Promise((resolve, reject) => {
        const req = request(
          { host: '127.0.0.1', port: f.server.http?.port, method, path: target, headers: { authorization: `Bearer ${token}`, ...headers } },
          (res) => {
            let text = '';
            res.on('data', (d: Buffer) => (text += d.toString()));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, code: (JSON.parse(text) as { error?: { code: string } }).error?.code }));
          },
        );
        req.on('error', reject);
        req.end(body);
      });
    for (const target of ['/devices/%E0%A4%A', '/devices/%', '/devices/%ZZ', '/commands/%C0%80', '/devices/http-1%FF/commands']) {
      expect(await raw('GET', target), target).to.deep.equal({ status: 400, code: 'E_BAD_PATH' });
    }
    expect(await raw('POST', '/devices/%E0/commands', '{"action":"selftest"}', { 'content-type': 'application/json' })).to.deep.equal({
      status: 400,
      code: 'E_BAD_PATH',
    });
    expect(await raw('GET', '//devices')).to.deep.equal({ status: 400, code: 'E_BAD_PATH' });
    expect(await raw('OPTIONS', '*')).to.deep.equal({ status: 400, code: 'E_BAD_PATH' });
    expect(await raw('GET', '/devices?user_id=%E0%A4%A')).to.deep.include({ status: 200 });
    expect(await raw('POST', '/devices/http-1/commands', '['.repeat(30_000), { 'content-type': 'application/json' })).to.deep.equal({
      status: 400,
      code: 'E_BAD_JSON',
    });
    expect(
      (await f.server.data.storage.commands.list({ deviceId: 'http-1' })).filter((c) => c.action === 'selftest' && c.createdAt > Date.now() - 5000),
    ).to.have.length(0);
  });
});
