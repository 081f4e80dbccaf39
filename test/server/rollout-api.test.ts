/**
 * The HTTP surface of tags, presence and rollouts, against `serve` on aedes
 * with its engine running: tags, dry runs that record nothing, refusals that
 * record nothing, a rollout and its controls, a delivery held for a board that
 * is offline by its report, and which reports may move presence.
 */
import { expect } from 'chai';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { toPublicJwk } from '../../protocol/index.js';
import { eventually, makeSimDevice, type SimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { sqliteDb } from '../helpers/sqlite-db.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

type Body = Record<string, unknown> & { error?: { code: string; message: string } };

describe('server: HTTP API for tags, presence and rollouts', function () {
  this.timeout(30_000);
  let f: Fixture;
  let base: string;
  let token: string;
  const dev: Record<'on1' | 'on2' | 'off' | 'new' | 'held', SimDevice> = {} as Record<'on1' | 'on2' | 'off' | 'new' | 'held', SimDevice>;

  const call = async (method: string, path: string, body?: unknown): Promise<{ status: number; body: Body; location: string | null }> => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    return { status: res.status, body: (await res.json()) as Body, location: res.headers.get('location') };
  };

  /** What a refusal must leave untouched: rollouts, targets, commands, seqs, tags. */
  const snapshot = (): Record<string, unknown> => {
    const db = sqliteDb(f.server.data.storage);
    const n = (sql: string): unknown => (db.prepare(sql).get() as { n: number }).n;
    return {
      rollouts: n('SELECT COUNT(*) AS n FROM rollouts'),
      targets: n('SELECT COUNT(*) AS n FROM rollout_targets'),
      commands: n('SELECT COUNT(*) AS n FROM commands'),
      seqs: db.prepare('SELECT id, next_seq FROM devices ORDER BY id').all(),
      tags: db.prepare('SELECT device_id, tag FROM device_tags ORDER BY device_id, tag').all(),
    };
  };

  const reportsFrom = (id: string): number => f.inbound.filter((r) => (r.kind === 'report' && r.deviceId === id) || r.kind === 'dropped').length;
  /** Sends a report and waits until the server handled it (recorded, stale, duplicate or dropped). */
  const handled = async (id: string, send: () => Promise<void>): Promise<void> => {
    const before = reportsFrom(id);
    await send();
    await eventually(() => reportsFrom(id) > before, 10_000, `the report of ${id} handled`);
  };

  before(async () => {
    f = await startFixture({ http: { host: '127.0.0.1', port: 0 }, shared: 'off' });
    base = `http://127.0.0.1:${f.server.http?.port}`;
    token = (await readFile(join(f.dataDir, 'http.token'), 'utf8')).trim();
    const storage = f.server.data.storage;
    for (const k of ['on1', 'on2', 'off', 'new', 'held'] as const) {
      const d = f.fleet.add(await makeSimDevice(`api-${k}`));
      dev[k] = d;
      await storage.devices.add({
        id: d.id,
        userId: 'alice',
        origin: 'jwks',
        signing: toPublicJwk(d.signing),
        encryption: toPublicJwk(d.encryption),
        state: 'provisioned',
      });
    }
    for (const d of [dev.on1, dev.on2, dev.off, dev.held]) await handled(d.id, () => f.fleet.connectDevice(d));
    for (const d of [dev.off, dev.held]) await handled(d.id, () => f.fleet.disconnectDevice(d));
  });
  after(async () => {
    await f?.close();
  });

  it('tags: PUT and DELETE /devices/{id}/tags/{tag}, GET /tags, GET /devices?tag=; a bad tag is 400 E_BAD_TAG and changes nothing', async () => {
    expect((await call('PUT', '/devices/api-on1/tags/site-a')).body).to.deep.equal({ device_id: 'api-on1', tags: ['site-a'] });
    expect((await call('PUT', '/devices/api-on1/tags/site-a')).body).to.deep.equal({ device_id: 'api-on1', tags: ['site-a'] });
    expect((await call('PUT', '/devices/api-on2/tags/site-a')).status).to.equal(200);
    expect((await call('PUT', '/devices/api-on2/tags/canary')).body).to.deep.equal({ device_id: 'api-on2', tags: ['canary', 'site-a'] });
    expect((await call('GET', '/tags')).body).to.deep.equal({
      tags: [
        { tag: 'canary', devices: 1 },
        { tag: 'site-a', devices: 2 },
      ],
    });
    const ids = async (q: string): Promise<string[]> => ((await call('GET', `/devices?tag=${q}`)).body.devices as { id: string }[]).map((d) => d.id);
    expect(await ids('site-a')).to.deep.equal(['api-on1', 'api-on2']);
    expect((await call('DELETE', '/devices/api-on2/tags/canary')).body).to.deep.equal({ device_id: 'api-on2', tags: ['site-a'] });
    expect(await ids('canary')).to.deep.equal([]);
    expect((await call('GET', '/tags')).body).to.deep.equal({ tags: [{ tag: 'site-a', devices: 2 }] });

    const before = snapshot();
    for (const [method, path] of [
      ['PUT', '/devices/api-on1/tags/-lead'],
      ['PUT', '/devices/api-on1/tags/has%20space'],
      ['PUT', `/devices/api-on1/tags/${'x'.repeat(65)}`],
      ['DELETE', '/devices/api-on1/tags/a%2Fb'],
    ] as const) {
      const r = await call(method, path);
      expect([r.status, r.body.error?.code], `${method} ${path}`).to.deep.equal([400, 'E_BAD_TAG']);
    }
    expect((await call('GET', '/devices?tag=has%20space')).body.error?.code).to.equal('E_BAD_TAG');
    expect((await call('PUT', '/devices/nobody/tags/site-a')).body.error?.code).to.equal('E_NO_DEVICE');
    expect((await call('POST', '/devices/api-on1/tags/site-a')).status).to.equal(405);
    expect(snapshot()).to.deep.equal(before);
  });

  it('POST /rollouts dry_run: 200 with the targets, their presence and the params as validated; records nothing', async () => {
    const before = snapshot();
    const r = await call('POST', '/rollouts', {
      action: 'update',
      params: { user_id: 7, sensor: { sample_interval_s: 45 } },
      selector: { devices: ['api-on1', 'api-off', 'api-new'] },
      rate_per_min: 120,
      ramp_from_per_min: 10,
      abort_percent: 5,
      deliver_within_s: 3600,
      dry_run: true,
    });
    expect(r.status, JSON.stringify(r.body)).to.equal(200);
    expect(r.body).to.include({ dry_run: true, action: 'update', rate_per_min: 120, concurrency: 32 });
    expect(r.body.params).to.deep.equal({ user_id: '7', sensor: { sample_interval_s: 45 } });
    expect(r.body.ramp).to.deep.equal({ from_per_min: 10, factor: 2 });
    expect(r.body.abort).to.deep.equal({ percent: 5, min_results: 10 });
    const targets = r.body.targets as { device_id: string; presence: string; last_seen_at: string | null; agent_version: string | null; sendable: boolean }[];
    expect(targets.map((t) => [t.device_id, t.presence, t.agent_version, t.sendable])).to.deep.equal([
      ['api-on1', 'online', 'sim-1.0.0', true],
      ['api-off', 'offline', 'sim-1.0.0', true],
      ['api-new', 'unknown', null, true],
    ]);
    expect(targets[2]?.last_seen_at).to.equal(null);
    expect(r.body.summary).to.deep.equal({ targets: 3, online: 1, offline: 1, unknown: 1, not_sendable: 0 });
    expect(snapshot()).to.deep.equal(before);
    expect((await call('GET', '/rollouts')).body).to.deep.equal({ rollouts: [] });
  });

  it('POST /rollouts refuses bad bodies with 400 and a clear code, recording nothing', async () => {
    const before = snapshot();
    const ok = { action: 'selftest', selector: { tag: 'site-a' } };
    const cases: [unknown, number, string, RegExp][] = [
      [{ ...ok, colour: 'red' }, 400, 'E_BAD_REQUEST', /unknown member.*colour/],
      [{ ...ok, selector: { all: true, tag: 'site-a' } }, 400, 'E_BAD_REQUEST', /selector/],
      [{ ...ok, selector: { devices: [] } }, 400, 'E_BAD_REQUEST', /selector/],
      [{ ...ok, selector: { everyone: true } }, 400, 'E_BAD_REQUEST', /selector/],
      [{ ...ok, selector: { devices: ['ghost'] } }, 404, 'E_NO_DEVICE', /ghost/],
      [{ ...ok, selector: { tag: 'nobody-has-it' } }, 400, 'E_BAD_REQUEST', /no device matches/],
      [{ ...ok, selector: { tag: 'site a' }, dry_run: true }, 400, 'E_BAD_TAG', /tag "site a" must be/],
      [{ ...ok, rate_per_min: 100_001 }, 400, 'E_USAGE', /rate.*1-100000/],
      [{ ...ok, rate_per_min: 'fast' }, 400, 'E_BAD_REQUEST', /rate_per_min must be a number/],
      [{ ...ok, rate_per_min: 60, ramp_from_per_min: 120 }, 400, 'E_USAGE', /ramp starts at 120\/min, above the rate of 60\/min/],
      [{ ...ok, ramp_factor: 3 }, 400, 'E_USAGE', /ramp factor/],
      [{ ...ok, abort_percent: 0 }, 400, 'E_USAGE', /abort percentage/],
      [{ ...ok, concurrency: 0 }, 400, 'E_USAGE', /concurrency/],
      [{ ...ok, deliver_within_s: 0 }, 400, 'E_USAGE', /delivery deadline/],
      [{ ...ok, action: 'reboot' }, 400, 'E_ACTION', /action must be one of/],
      [{ ...ok, action: 'update', params: { sensor: { enabled: 'yes' } } }, 400, 'E_PARAMS', /enabled/],
      [{ ...ok, params: { anything: 1 } }, 400, 'E_PARAMS', /anything/],
      [{ ...ok, dry_run: 'yes' }, 400, 'E_BAD_REQUEST', /dry_run/],
      [[ok], 400, 'E_BAD_REQUEST', /JSON object/],
    ];
    for (const [body, status, code, message] of cases) {
      const r = await call('POST', '/rollouts', body);
      expect([r.status, r.body.error?.code], JSON.stringify(body)).to.deep.equal([status, code]);
      expect(r.body.error?.message, JSON.stringify(body)).to.match(message);
    }
    expect(snapshot()).to.deep.equal(before);
  });

  it('POST /rollouts: 201 and Location, applied to its targets; GET /rollouts?open=1; pause, resume, cancel, 409 E_ROLLOUT_STATE and 404', async () => {
    const r = await call('POST', '/rollouts', { action: 'update', params: { sensor: { sample_interval_s: 45 } }, selector: { tag: 'site-a' } });
    expect(r.status, JSON.stringify(r.body)).to.equal(201);
    const id = r.body.id as string;
    expect(r.location).to.equal(`/rollouts/${id}`);
    expect(r.body).to.include({ action: 'update', state: 'running' });
    const done = await eventually(
      async () => {
        const s = await call('GET', `/rollouts/${id}?targets=1`);
        return s.body.state === 'completed' && s.body;
      },
      10_000,
      'the rollout completed',
    );
    expect(done.progress).to.deep.equal({ done: 2, total: 2 });
    expect((done.targets as { device_id: string; state: string; attempts: number }[]).map((t) => [t.device_id, t.state, t.attempts])).to.deep.equal([
      ['api-on1', 'applied', 1],
      ['api-on2', 'applied', 1],
    ]);
    for (const d of [dev.on1, dev.on2]) expect(d.applied.map((c) => c.params)).to.deep.equal([{ sensor: { sample_interval_s: 45 } }]);
    expect((await call('POST', `/rollouts/${id}/cancel`)).body.error?.code).to.equal('E_ROLLOUT_STATE');
    expect((await call('POST', `/rollouts/${id}/pause`)).status).to.equal(409);

    // One that stays open: its only board is offline by its report.
    const held = await call('POST', '/rollouts', { action: 'selftest', selector: { devices: ['api-off'] } });
    expect(held.status).to.equal(201);
    const hid = held.body.id as string;
    const open = (await call('GET', '/rollouts?open=1')).body.rollouts as { id: string }[];
    expect(open.map((o) => o.id)).to.deep.equal([hid]);
    expect(((await call('GET', '/rollouts')).body.rollouts as { id: string }[]).map((o) => o.id)).to.deep.equal([hid, id]);
    const resumeRunning = await call('POST', `/rollouts/${hid}/resume`);
    expect([resumeRunning.status, resumeRunning.body.error?.code]).to.deep.equal([409, 'E_ROLLOUT_STATE']);
    expect((await call('POST', `/rollouts/${hid}/pause`)).body).to.include({ id: hid, state: 'paused' });
    expect((await call('POST', `/rollouts/${hid}/pause`)).status).to.equal(409);
    expect((await call('POST', `/rollouts/${hid}/resume`)).body).to.include({ state: 'running' });
    const cancelled = await call('POST', `/rollouts/${hid}/cancel`);
    expect(cancelled.body).to.include({ state: 'cancelled' });
    expect(cancelled.body.counts).to.include({ cancelled: 1, pending: 0 });
    await eventually(async () => (await call('GET', `/rollouts/${hid}`)).body.finished_at !== null, 5000, 'the cancelled rollout finished');
    expect((await call('POST', `/rollouts/${hid}/resume`)).status).to.equal(409);
    expect((await call('GET', '/rollouts?open=1')).body).to.deep.equal({ rollouts: [] });
    expect(dev.off.received).to.have.length(0);

    const unknown = await call('GET', '/rollouts/00000000-0000-4000-8000-000000000000');
    expect([unknown.status, unknown.body.error?.code]).to.deep.equal([404, 'E_NO_ROLLOUT']);
    expect((await call('POST', '/rollouts/00000000-0000-4000-8000-000000000000/pause')).status).to.equal(404);
    expect((await call('POST', `/rollouts/${id}/restart`)).status).to.equal(404);
    expect((await call('DELETE', `/rollouts/${id}`)).status).to.equal(405);
  });

  it('holds a delivery for a board offline by its report until it reports connect, then applies it; GET /devices/{id} shows presence', async () => {
    const d = dev.held;
    const offline = (await call('GET', `/devices/${d.id}`)).body;
    expect(offline).to.include({ presence: 'offline' });
    const r = await call('POST', '/rollouts', { action: 'update', params: { reporting: { interval_s: 90 } }, selector: { devices: [d.id] }, ttl_s: 60 });
    expect(r.status).to.equal(201);
    const id = r.body.id as string;
    await sleep(1000);
    expect(d.received.length + d.queued.length, 'nothing sent while it is offline').to.equal(0);
    expect((await call('GET', `/rollouts/${id}`)).body.counts).to.include({ pending: 1, sent: 0 });

    const at = Date.now();
    await f.fleet.connectDevice(d, { intervalSeconds: 120 });
    await eventually(async () => (await call('GET', `/rollouts/${id}`)).body.state === 'completed', 10_000, 'the held rollout completed');
    expect(d.applied.map((c) => c.params)).to.deep.equal([{ reporting: { interval_s: 90 } }]);
    expect((d.received[0]?.at ?? 0) - at).to.be.below(5000);
    const view = (await call('GET', `/devices/${d.id}`)).body;
    expect(view).to.include({ presence: 'online', report_interval_s: 120, next_seq: 2 });
    expect(Date.parse(view.last_seen_at as string)).to.be.within(at - 1000, Date.now());
    expect(view.reported).to.include({ reason: 'connect', agent_version: 'sim-1.0.0', kids_match: true });
  });

  it('presence: an old will (older conn or session) is ignored, a report signed by another key is dropped', async () => {
    const storage = f.server.data.storage;
    const d = dev.on1;
    d.run += 1; // the agent restarted, and reconnected once since
    d.conn = 0;
    await handled(d.id, () => f.fleet.connectDevice(d));
    await handled(d.id, () => f.fleet.connectDevice(d));
    const presence = async (): Promise<unknown> => ((await storage.devices.require(d.id)).presence as { reported: unknown }).reported;
    expect(await presence()).to.equal('online');

    // The will of the previous connection, delivered late by the broker.
    d.conn -= 1;
    await handled(d.id, () => f.fleet.report(d, 'offline'));
    d.conn += 1;
    expect(f.inbound.at(-1)).to.deep.include({ kind: 'report', deviceId: d.id, reason: 'offline', recorded: 'stale' });
    // The will of an earlier session (the agent restarted since: an earlier run).
    const session = d.session;
    d.session = '11111111-1111-4111-8111-111111111111';
    d.run -= 1;
    await handled(d.id, () => f.fleet.report(d, 'offline'));
    d.session = session;
    d.run += 1;
    expect(f.inbound.at(-1)).to.deep.include({ kind: 'report', recorded: 'stale' });
    expect(await presence()).to.equal('online');

    // Another key claiming to be the device, with its current session and conn.
    const impostor = await makeSimDevice(d.id);
    impostor.session = d.session;
    impostor.conn = d.conn;
    await handled(d.id, () => f.fleet.report(impostor, 'offline'));
    expect(f.inbound.at(-1)).to.include({ kind: 'dropped', code: 'E_SIGNATURE' });
    expect(await presence()).to.equal('online');
    expect((await call('GET', `/devices/${d.id}`)).body).to.include({ presence: 'online' });

    // The device's own offline report for its current connection does count.
    await handled(d.id, () => f.fleet.disconnectDevice(d));
    expect(await presence()).to.equal('offline');
  });
});
