/**
 * The console's fleet read models over real HTTP on a real serve and registry (server/http/fleet-routes.ts):
 * GET /devices with filters, sort and paging, GET /devices/{id}/commands and /presence, POST /devices/tags.
 */
import { expect } from 'chai';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { toPublicJwk } from '../../protocol/index.js';
import { eventually, makeSimDevice, type SimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { keyPair } from '../storage/fixtures.js';
import { addOperators, ApiClient, PASSWORD } from './http-auth-client.js';

type Body = Record<string, unknown> & { error?: { code: string; message: string } };
interface DeviceOut {
  id: string;
  user_id: string | null;
  tags: string[];
  presence: string;
  last_command: { jti: string; action: string; status: string; code: string | null; created_at: string; acked_at: string | null } | null;
}

describe('server: fleet read models (GET /devices paging, commands, presence, bulk tags)', function () {
  this.timeout(60_000);
  let f: Fixture;
  let base: string;
  let token: string;
  let live: SimDevice;
  const HOSTILE_USER = '<img src=x onerror="window.__pwned=1">';

  before(async () => {
    f = await startFixture({ http: { host: '127.0.0.1', port: 0 } });
    base = `http://127.0.0.1:${f.server.http?.port}`;
    token = (await readFile(join(f.dataDir, 'http.token'), 'utf8')).trim();
    const storage = f.server.data.storage;
    // live-1 is a real simulated agent on the broker (commands, reports); the others are registry rows.
    const d = (live = f.fleet.add(await makeSimDevice('live-1')));
    await storage.devices.add({
      id: 'live-1',
      userId: 'alice',
      origin: 'jwks',
      signing: toPublicJwk(d.signing),
      encryption: toPublicJwk(d.encryption),
      state: 'provisioned',
    });
    for (let i = 0; i < 12; i++) {
      const k = await keyPair();
      const id = `dev-${String(i).padStart(2, '0')}`;
      await storage.devices.add({ id, userId: i % 3 === 0 ? 'bob' : i === 5 ? HOSTILE_USER : 'carol', origin: 'jwks', ...k, state: 'provisioned' });
    }
    await storage.devices.addTags('dev-01', ['lab']);
    await storage.devices.addTags('dev-02', ['lab']);
  });
  after(async () => {
    await f.close();
  });

  const call = async (method: string, path: string, body?: unknown): Promise<{ status: number; type: string | null; body: Body }> => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
    });
    return { status: res.status, type: res.headers.get('content-type'), body: (await res.json()) as Body };
  };
  const devicesOf = (b: Body): DeviceOut[] => b.devices as DeviceOut[];

  it('without limit answers every device as before, now with total, offset, limit null and last_command', async () => {
    const r = await call('GET', '/devices');
    expect(r.status).to.equal(200);
    expect([r.body.total, r.body.offset, r.body.limit]).to.deep.equal([13, 0, null]);
    expect(devicesOf(r.body).map((d) => d.id)).to.deep.equal([
      'dev-00',
      'dev-01',
      'dev-02',
      'dev-03',
      'dev-04',
      'dev-05',
      'dev-06',
      'dev-07',
      'dev-08',
      'dev-09',
      'dev-10',
      'dev-11',
      'live-1',
    ]);
    expect(devicesOf(r.body).every((d) => d.last_command === null)).to.equal(true);
    // The old filters keep working.
    expect(devicesOf((await call('GET', '/devices?user_id=bob')).body).map((d) => d.id)).to.deep.equal(['dev-00', 'dev-03', 'dev-06', 'dev-09']);
    expect(devicesOf((await call('GET', '/devices?tag=lab')).body).map((d) => d.id)).to.deep.equal(['dev-01', 'dev-02']);
  });

  it('pages, filters and sorts: limit/offset with total, q, sort=user desc', async () => {
    const p1 = await call('GET', '/devices?limit=5&offset=5');
    expect([p1.body.total, p1.body.offset, p1.body.limit]).to.deep.equal([13, 5, 5]);
    expect(devicesOf(p1.body).map((d) => d.id)).to.deep.equal(['dev-05', 'dev-06', 'dev-07', 'dev-08', 'dev-09']);
    const q = await call('GET', '/devices?q=BOB&limit=2');
    expect([q.body.total, devicesOf(q.body).map((d) => d.id)]).to.deep.equal([4, ['dev-00', 'dev-03']]);
    const sorted = await call('GET', '/devices?sort=user&dir=desc&limit=3');
    expect(devicesOf(sorted.body).map((d) => d.user_id)).to.deep.equal(['carol', 'carol', 'carol']);
    const none = await call('GET', '/devices?version=none&flagged=0&online=0&limit=500');
    expect(none.body.total).to.equal(13);
  });

  it('hostile user ids and query values are data: JSON out, intact, never interpreted', async () => {
    const r = await call('GET', `/devices?q=${encodeURIComponent('<img')}`);
    expect(r.type).to.match(/^application\/json/);
    expect(devicesOf(r.body).map((d) => [d.id, d.user_id])).to.deep.equal([['dev-05', HOSTILE_USER]]);
    const script = await call('GET', `/devices?q=${encodeURIComponent('"><script>alert(1)</script>')}&limit=1`);
    expect([script.status, script.body.total]).to.deep.equal([200, 0]);
  });

  it('400 E_BAD_REQUEST naming an unknown parameter or a bad value; E_BAD_TAG for a tag that cannot be one', async () => {
    const bad: [string, string][] = [
      ['/devices?colour=red', 'colour'],
      ['/devices?limit=0', 'limit'],
      ['/devices?limit=501', 'limit'],
      ['/devices?limit=ten', 'limit'],
      ['/devices?offset=-1', 'offset'],
      ['/devices?online=yes', 'online'],
      ['/devices?flagged=2', 'flagged'],
      ['/devices?sort=colour', 'sort'],
      ['/devices?dir=up', 'dir'],
      ['/devices?limit=1&limit=2', 'limit'],
      [`/devices?${encodeURIComponent('<b>x</b>')}=1`, '<b>x</b>'],
      [`/devices?user_id=${'u'.repeat(129)}`, 'user_id'],
    ];
    for (const [path, name] of bad) {
      const r = await call('GET', path);
      expect(r.status, path).to.equal(400);
      expect(r.body.error?.code, path).to.equal('E_BAD_REQUEST');
      expect(r.body.error?.message, path).to.contain(name);
    }
    expect((await call('GET', '/devices?tag=has%20space')).body.error?.code).to.equal('E_BAD_TAG');
    expect((await call('POST', '/devices')).status).to.equal(405);
  });

  it("each device's last command, its commands newest first, and its presence history from real signed reports", async () => {
    const r = await call('POST', '/devices/live-1/commands', { action: 'selftest', user_id: 'alice' });
    expect(r.status).to.equal(202);
    const jti = r.body.jti as string;
    await eventually(async () => (await call('GET', `/commands/${jti}`)).body.status === 'applied', 10_000, 'selftest applied');
    const second = await call('POST', '/devices/live-1/commands', { action: 'update', user_id: 'alice', params: { reporting: { interval_s: 60 } } });
    await eventually(async () => (await call('GET', `/commands/${second.body.jti as string}`)).body.status === 'applied', 10_000, 'update applied');
    const page = await call('GET', '/devices?q=live&limit=1');
    const last = devicesOf(page.body)[0]?.last_command;
    expect(last).to.deep.include({ jti: second.body.jti, action: 'update', status: 'applied', code: 'OK' });
    expect(last?.acked_at).to.be.a('string');
    const cmds = await call('GET', '/devices/live-1/commands');
    expect((cmds.body.commands as { jti: string; status: string }[]).map((c) => [c.jti, c.status])).to.deep.equal([
      [second.body.jti, 'applied'],
      [jti, 'applied'],
    ]);
    expect(((await call('GET', '/devices/live-1/commands?limit=1')).body.commands as unknown[]).length).to.equal(1);
    expect((await call('GET', '/devices/live-1/commands?limit=0')).body.error?.code).to.equal('E_BAD_REQUEST');
    expect((await call('GET', '/devices/ghost/commands')).status).to.equal(404);
    expect((await call('GET', '/devices/bad%20id/commands')).status).to.equal(400);

    // Real signed reports over the broker: connect, then its clean-stop offline report, then connect again.
    await f.fleet.connectDevice(live);
    await eventually(async () => (await call('GET', '/devices/live-1')).body.presence === 'online', 10_000, 'online');
    await f.fleet.disconnectDevice(live);
    await eventually(async () => (await call('GET', '/devices/live-1')).body.presence === 'offline', 10_000, 'offline');
    await f.fleet.connectDevice(live);
    const history = await eventually(
      async () => {
        const h = await call('GET', '/devices/live-1/presence');
        return (h.body.changes as unknown[]).length === 3 && h.body;
      },
      10_000,
      'three presence changes',
    );
    expect(history.presence).to.equal('online');
    expect((history.changes as { presence: string; reason: string; conn: number }[]).map((c) => [c.presence, c.reason, c.conn])).to.deep.equal([
      ['online', 'connect', 2],
      ['offline', 'offline', 1],
      ['online', 'connect', 1],
    ]);
    expect(((await call('GET', '/devices/live-1/presence?limit=1')).body.changes as unknown[]).length).to.equal(1);
    const presence = await call('GET', '/devices/dev-00/presence');
    expect(presence.body).to.deep.equal({ device_id: 'dev-00', presence: 'unknown', last_seen_at: null, changes: [] });
    expect((await call('GET', '/devices/ghost/presence')).status).to.equal(404);
    expect((await call('GET', '/devices/dev-00/presence?since=1')).body.error?.message).to.contain('since');
  });

  it('POST /devices/tags tags many devices at once (audited per device with by); an unknown device: 404 naming it, nothing changed', async () => {
    const before = await f.server.data.storage.audit.lastId();
    const r = await call('POST', '/devices/tags', { devices: ['dev-03', 'dev-04'], add: ['wave-1'], remove: ['lab'] });
    expect(r.status, JSON.stringify(r.body)).to.equal(200);
    expect(r.body.devices).to.deep.equal([
      { device_id: 'dev-03', tags: ['wave-1'] },
      { device_id: 'dev-04', tags: ['wave-1'] },
    ]);
    const rows = await f.server.data.storage.audit.eventsSince(before, await f.server.data.storage.audit.lastId(), 'device.tag.', 10);
    expect(rows.map((x) => [x.event, x.deviceId, x.detail])).to.deep.equal([
      ['device.tag.add', 'dev-03', { tags: ['wave-1'], by: 'http-token' }],
      ['device.tag.add', 'dev-04', { tags: ['wave-1'], by: 'http-token' }],
    ]);
    const mark = await f.server.data.storage.audit.lastId();
    const unknown = await call('POST', '/devices/tags', { devices: ['dev-05', 'ghost-9'], add: ['wave-2'] });
    expect([unknown.status, unknown.body.error?.code]).to.deep.equal([404, 'E_NO_DEVICE']);
    expect(unknown.body.error?.message).to.contain('ghost-9');
    expect(await f.server.data.storage.devices.tagsOf('dev-05')).to.deep.equal([]);
    for (const body of [
      { devices: ['dev-05'] },
      { devices: [], add: ['a'] },
      { devices: ['dev-05'], add: ['a'], remove: ['a'] },
      { devices: ['dev-05'], add: 'a' },
      { devices: ['<script>'], add: ['a'] },
      { devices: ['dev-05'], add: ['a'], extra: 1 },
    ]) {
      const bad = await call('POST', '/devices/tags', body);
      expect([bad.status, bad.body.error?.code], JSON.stringify(body)).to.deep.equal([400, 'E_BAD_REQUEST']);
    }
    expect((await call('POST', '/devices/tags', { devices: ['dev-05'], add: ['<b>'] })).body.error?.code).to.equal('E_BAD_TAG');
    expect(await f.server.data.storage.audit.lastId()).to.equal(mark);
  });

  it('audits changes with the principal who asked (by: the operator logged in), and the roles refuse the others', async () => {
    const storage = f.server.data.storage;
    await addOperators(storage, { vic: 'viewer', opal: 'operator', adam: 'admin' });
    const vic = new ApiClient(base);
    const opal = new ApiClient(base);
    const adam = new ApiClient(base);
    for (const [c, name] of [
      [vic, 'vic'],
      [opal, 'opal'],
      [adam, 'adam'],
    ] as const)
      expect((await c.login(name, PASSWORD)).status).to.equal(200);
    const before = await storage.audit.lastId();
    // A viewer reads the fleet, its commands and presence, and changes nothing.
    expect((await vic.call('GET', '/devices?limit=2')).status).to.equal(200);
    expect((await vic.call('GET', '/devices/dev-00/presence')).status).to.equal(200);
    const refused = await vic.call('POST', '/devices/tags', { body: { devices: ['dev-06'], add: ['v'] } });
    expect([refused.status, refused.body.error?.code]).to.deep.equal([403, 'E_FORBIDDEN']);
    // An operator tags; it sees the enrollment tokens, but making one is an admin's.
    expect((await opal.call('POST', '/devices/tags', { body: { devices: ['dev-06'], add: ['by-opal'] } })).status).to.equal(200);
    expect((await opal.call('GET', '/enrollment/tokens')).status).to.equal(200);
    expect((await opal.call('POST', '/enrollment/tokens', { body: { device_id: 'dev-98', user_id: 'u' } })).status).to.equal(403);
    expect((await adam.call('POST', '/enrollment/tokens', { body: { device_id: 'dev-99', user_id: 'u' } })).status).to.equal(201);
    const rows = await storage.audit.eventsSince(before, await storage.audit.lastId(), '', 100);
    const mine = rows.filter((r) => r.event === 'device.tag.add' || r.event === 'token.create');
    expect(mine.map((r) => [r.event, r.deviceId, r.detail.by])).to.deep.equal([
      ['device.tag.add', 'dev-06', 'opal'],
      ['token.create', 'dev-99', 'adam'],
    ]);
  });
});
