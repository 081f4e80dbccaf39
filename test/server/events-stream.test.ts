/**
 * GET /events (server/http/events-stream.ts) over real HTTP on a real serve and registry: audit rows live and
 * resumed (Last-Event-ID, ?after=), rollout progress of a real rollout to simulated agents on the broker, the
 * stream ended with its console session, serve closing promptly with streams open; and the hub alone (a bare
 * node:http server on a real registry): the stream cap (503), pings, one shared timer stopped when idle.
 */
import { expect } from 'chai';
import { createServer, type Server } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { toPublicJwk } from '../../protocol/index.js';
import { EventHub } from '../../server/http/events-stream.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import type { Storage } from '../../server/storage/types.js';
import { addOperators, ApiClient, legacyToken, PASSWORD } from './http-auth-client.js';
import { makeSimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { SseClient, type SseEvent } from './sse-client.js';
import { addDevice, spec } from '../storage/fixtures.js';

const audits = (events: SseEvent[]): { id: number; event: string; device_id: string | null; detail: Record<string, unknown> }[] =>
  events
    .filter((e) => e.event === 'audit')
    .map((e) => JSON.parse(e.data) as { id: number; event: string; device_id: string | null; detail: Record<string, unknown> });

describe('server: GET /events (server-sent events)', function () {
  this.timeout(60_000);
  let f: Fixture;
  let base: string;
  let admin: ApiClient;
  const open: SseClient[] = [];
  const stream = async (path: string, headers: Record<string, string> = {}): Promise<SseClient> => {
    const c = await SseClient.open(`${base}${path}`, headers);
    open.push(c);
    return c;
  };

  before(async () => {
    f = await startFixture({ http: { host: '127.0.0.1', port: 0 } });
    base = `http://127.0.0.1:${f.server.http?.port}`;
    admin = new ApiClient(base, { bearer: await legacyToken(f.dataDir) });
    await addOperators(f.server.data.storage, { vera: 'viewer', otto: 'operator' });
    for (const id of ['ev-1', 'ev-2']) {
      const d = f.fleet.add(await makeSimDevice(id));
      await f.server.data.storage.devices.add({
        id,
        userId: 'alice',
        origin: 'jwks',
        signing: toPublicJwk(d.signing),
        encryption: toPublicJwk(d.encryption),
        state: 'provisioned',
      });
    }
  });
  afterEach(() => {
    for (const c of open.splice(0)) c.close();
  });
  after(async () => {
    await f.close();
  });

  it('sends each new audit row (id, event audit, the GET /audit view) to a viewer session; hostile details stay JSON data', async () => {
    const vera = new ApiClient(base);
    expect((await vera.login('vera', PASSWORD)).status).to.equal(200);
    const s = await stream('/events', { cookie: vera.cookie as string });
    expect(s.status).to.equal(200);
    expect(s.headers['content-type']).to.equal('text/event-stream; charset=utf-8');
    expect(s.headers['x-content-type-options']).to.equal('nosniff');
    const hostile = '</script><script>window.__pwned=1</script>\n\nevent: audit\ndata: {"forged":true}';
    const t = await admin.call('POST', '/enrollment/tokens', { body: { device_id: 'ev-new', user_id: hostile } });
    expect(t.status).to.equal(201);
    const tagged = await admin.call('POST', '/devices/tags', { body: { devices: ['ev-1', 'ev-2'], add: ['wave-a'] } });
    expect(tagged.status).to.equal(200);
    const rows = await s.until((e) => audits(e).filter((a) => a.event === 'device.tag.add').length === 2 && audits(e), 10_000, 'two tag rows');
    const token = rows.find((a) => a.event === 'token.create');
    expect(token?.detail.user_id).to.equal(hostile);
    expect(s.events.some((e) => e.data.includes('"forged":true') && !e.data.includes('user_id'))).to.equal(false);
    // Ids are the audit ids, in order, and the views are those of GET /audit.
    const ids = s.events.filter((e) => e.event === 'audit').map((e) => Number(e.id));
    expect(ids).to.deep.equal([...ids].sort((a, b) => a - b));
    const viaApi = (await admin.call('GET', `/audit?device=ev-1`)).body.audit as { id: number }[];
    const last = viaApi[viaApi.length - 1] as { id: number };
    expect(rows.find((a) => a.id === last.id)).to.deep.equal(last);
  });

  it('resumes after Last-Event-ID or ?after=N (the rows after it, in order); a bad value is 400 naming it', async () => {
    const storage = f.server.data.storage;
    const top = await storage.audit.lastId();
    const from = top - 3;
    const expected = (await storage.audit.eventsSince(from, top, '', 10)).map((r) => r.id);
    expect(expected).to.have.length(3);
    const byHeader = await stream('/events', { authorization: `Bearer ${admin.bearer as string}`, 'last-event-id': String(from) });
    const byQuery = await stream(`/events?after=${from}`, { authorization: `Bearer ${admin.bearer as string}` });
    for (const s of [byHeader, byQuery]) {
      const got = await s.until((e) => audits(e).length >= 3 && audits(e), 10_000, 'the resumed rows');
      expect(got.map((a) => a.id).slice(0, 3)).to.deep.equal(expected);
    }
    for (const [path, headers, name] of [
      ['/events?after=x', {}, 'after'],
      ['/events', { 'last-event-id': '-1' }, 'Last-Event-ID'],
      ['/events?since=1', {}, 'since'],
    ] as const) {
      const bad = await stream(path, { authorization: `Bearer ${admin.bearer as string}`, ...headers });
      expect(bad.status, path).to.equal(400);
      await bad.ended;
      expect((JSON.parse(bad.body) as { error: { code: string; message: string } }).error.message).to.contain(name);
    }
    const anon = await stream('/events');
    expect(anon.status).to.equal(401);
  });

  it('sends rollout progress while a real rollout runs to simulated agents, through to its final state', async () => {
    const s = await stream('/events', { authorization: `Bearer ${admin.bearer as string}` });
    await s.until((e) => e.length >= 0 && s.status === 200, 1000, 'open');
    const r = await admin.call('POST', '/rollouts', { body: { action: 'selftest', selector: { devices: ['ev-1', 'ev-2'] }, rate_per_min: 40 } });
    expect(r.status, JSON.stringify(r.body)).to.equal(201);
    const id = r.body.id as string;
    type View = { id: string; state: string; counts: Record<string, number> };
    const views = (e: SseEvent[]): View[] =>
      e
        .filter((x) => x.event === 'rollout')
        .map((x) => JSON.parse(x.data) as View)
        .filter((v) => v.id === id);
    const done = await s.until((e) => views(e).find((v) => v.state === 'completed'), 20_000, 'the rollout completed');
    expect(done.counts).to.deep.include({ applied: 2 });
    const seen = views(s.events);
    // Progress came as it happened (more than the final view), each view different from the one before.
    expect(seen.length).to.be.greaterThan(1);
    for (let i = 1; i < seen.length; i++) expect(JSON.stringify(seen[i])).to.not.equal(JSON.stringify(seen[i - 1]));
    // And the rollout's audit rows came on the same stream.
    expect(audits(s.events).some((a) => a.event.startsWith('rollout.') && a.detail.rollout_id === id)).to.equal(true);
  });

  it('ends a stream when its console session ends (logout), with event end', async () => {
    const otto = new ApiClient(base);
    expect((await otto.login('otto', PASSWORD)).status).to.equal(200);
    const s = await stream('/events', { cookie: otto.cookie as string });
    expect(s.status).to.equal(200);
    expect((await otto.call('DELETE', '/session')).status).to.equal(204);
    await s.until((e) => e.find((x) => x.event === 'end'), 5000, 'event end');
    await s.ended;
    expect(JSON.parse(s.events.find((x) => x.event === 'end')?.data ?? '{}')).to.deep.equal({ reason: 'session ended' });
  });

  it('serve closes promptly with streams open, ending them', async () => {
    const g = await startFixture({ http: { host: '127.0.0.1', port: 0 } });
    try {
      const url = `http://127.0.0.1:${g.server.http?.port}/events`;
      const auth = { authorization: `Bearer ${await legacyToken(g.dataDir)}` };
      const streams = await Promise.all([SseClient.open(url, auth), SseClient.open(url, auth), SseClient.open(url, auth)]);
      expect(streams.map((x) => x.status)).to.deep.equal([200, 200, 200]);
      const t = Date.now();
      await g.server.close();
      await Promise.all(streams.map((x) => x.ended));
      const took = Date.now() - t;
      expect(took, `close took ${took} ms`).to.be.below(5000);
    } finally {
      await g.close();
    }
  });
});

describe('server: the event hub alone (cap, pings, one shared timer)', function () {
  this.timeout(30_000);
  let dir: string;
  let storage: Storage;
  let server: Server;
  let hub: EventHub;
  let url: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'event-hub-'));
    storage = openSqliteStorage(join(dir, 'registry.sqlite'), { create: true });
    hub = new EventHub(storage, { tickMs: 50, pingMs: 300, maxStreams: 2 });
    server = createServer((req, res) => {
      const u = new URL(req.url ?? '/', 'http://localhost');
      hub.open(req, res, u, req.method ?? 'GET', {}).catch((err: unknown) => {
        res.writeHead(400);
        res.end(String(err));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const addr = server.address();
    url = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}/events`;
  });
  after(async () => {
    hub.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await storage.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses a stream over the cap with 503 E_STREAMS; pings a silent stream; the timer runs only while a stream is open', async () => {
    expect(hub.running).to.equal(false);
    const a = await SseClient.open(url);
    const b = await SseClient.open(url);
    expect([a.status, b.status, hub.size, hub.running]).to.deep.equal([200, 200, 2, true]);
    const c = await SseClient.open(url);
    await c.ended;
    expect(c.status).to.equal(503);
    expect(c.headers['retry-after']).to.equal('10');
    expect((JSON.parse(c.body) as { error: { code: string } }).error.code).to.equal('E_STREAMS');
    await a.until(() => a.comments.includes('ping') || undefined, 5000, 'a ping');
    await storage.audit.append('test.event', null, { n: 1 });
    const got = await b.until((e) => audits(e).find((x) => x.event === 'test.event'), 5000, 'the appended row');
    expect(got.detail).to.deep.equal({ n: 1 });
    a.close();
    b.close();
    await Promise.all([a.ended, b.ended]);
    const deadline = Date.now() + 5000;
    while (hub.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect([hub.size, hub.running]).to.deep.equal([0, false]);
    // A place freed: a new stream is accepted again.
    const d = await SseClient.open(url);
    expect(d.status).to.equal(200);
    d.close();
  });

  it('sends the final view of a rollout that started and finished between two ticks (the audit rows name it)', async () => {
    await addDevice(storage, 'hub-1');
    const s = await SseClient.open(url);
    expect(s.status).to.equal(200);
    // SQLite answers synchronously: no timer tick can run between these two calls.
    const r = await storage.rollouts.create(spec({ devices: ['hub-1'] }), ['hub-1']);
    await storage.rollouts.finish(r.id, 'cancelled', 'test: over before a tick');
    const view = await s.until(
      (e) =>
        e
          .filter((x) => x.event === 'rollout')
          .map((x) => JSON.parse(x.data) as { id: string; state: string })
          .find((v) => v.id === r.id),
      5000,
      'the rollout view',
    );
    expect(view.state).to.equal('cancelled');
    s.close();
  });
});
