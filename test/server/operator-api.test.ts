/**
 * The operator's gaps of issue 26 on the HTTP API and in serve's log, against
 * `serve` on aedes: GET /audit and its validation, a delete to many devices
 * refused without `"confirm"`, `warnings` for an abort rule that can never
 * trip, POST /rollouts/{id}/retry, and serve logging each rollout's creation
 * and control whichever process made it.
 */
import { expect } from 'chai';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createLogger } from '../../lib/log.js';
import { toPublicJwk } from '../../protocol/index.js';
import { eventually, makeSimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { sqliteDb } from '../helpers/sqlite-db.js';

type Body = Record<string, unknown> & { error?: { code: string; message: string } };

describe('server: HTTP API audit, confirmations, warnings and retry; serve logs rollouts', function () {
  this.timeout(30_000);
  let f: Fixture;
  let base: string;
  let token: string;
  const logLines: string[] = [];

  const call = async (method: string, path: string, body?: unknown): Promise<{ status: number; body: Body }> => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    return { status: res.status, body: (await res.json()) as Body };
  };

  const snapshot = (): Record<string, unknown> => {
    const db = sqliteDb(f.server.data.storage);
    const n = (sql: string): unknown => (db.prepare(sql).get() as { n: number }).n;
    return {
      rollouts: n('SELECT COUNT(*) AS n FROM rollouts'),
      targets: n('SELECT COUNT(*) AS n FROM rollout_targets'),
      commands: n('SELECT COUNT(*) AS n FROM commands'),
    };
  };

  before(async () => {
    f = await startFixture({
      http: { host: '127.0.0.1', port: 0 },
      shared: 'off',
      log: createLogger({ level: 'info', style: 'timestamped', write: (line) => logLines.push(line) }),
    });
    base = `http://127.0.0.1:${f.server.http?.port}`;
    token = (await readFile(join(f.dataDir, 'http.token'), 'utf8')).trim();
    const storage = f.server.data.storage;
    for (const id of ['opx-1', 'opx-2', 'opx-3']) {
      const d = await makeSimDevice(id);
      await storage.devices.add({
        id,
        userId: 'dana',
        origin: 'jwks',
        signing: toPublicJwk(d.signing),
        encryption: toPublicJwk(d.encryption),
        state: 'provisioned',
      });
      // Offline by its reports: a rollout holds its command (nothing is published in these tests).
      sqliteDb(storage).prepare("UPDATE devices SET presence = 'offline', last_seen_at = ?, report_interval_s = 60 WHERE id = ?").run(Date.now(), id);
    }
  });
  after(async () => {
    await f?.close();
  });

  it('GET /audit filters by device, action prefix, time and limit; bad filters are 400 E_BAD_REQUEST', async () => {
    let r = await call('GET', '/audit?device=opx-2');
    expect(r.status, JSON.stringify(r.body)).to.equal(200);
    const rows = r.body.audit as { event: string; device_id: string; at: string; detail: Record<string, unknown> }[];
    expect(rows.map((a) => [a.event, a.device_id])).to.deep.equal([['device.add', 'opx-2']]);
    expect(rows[0]?.detail).to.include({ origin: 'jwks', user_id: 'dana' });
    r = await call('GET', '/audit?action=device&since=1h&limit=2');
    expect((r.body.audit as { device_id: string }[]).map((a) => a.device_id)).to.deep.equal(['opx-2', 'opx-3']);
    r = await call('GET', `/audit?until=${encodeURIComponent('2020-01-01T00:00:00Z')}`);
    expect(r.body).to.deep.equal({ audit: [] });
    for (const [q, pattern] of [
      ['since=yesterday', /since "yesterday" is neither a duration ago/],
      ['limit=0', /limit "0" must be a whole number/],
      ['limit=abc', /limit "abc" must be a whole number/],
      ['rollout=x', /rollout "x" is not a rollout id/],
      ['device=..', /device "\.\." is not a device id/],
      ['devices=opx-1', /unknown query parameter\(s\): "devices"/],
      ['device=opx-1&device=opx-2', /device given 2 times/],
    ] as const) {
      r = await call('GET', `/audit?${q}`);
      expect([r.status, r.body.error?.code], q).to.deep.equal([400, 'E_BAD_REQUEST']);
      expect(r.body.error?.message, q).to.match(pattern);
    }
    expect((await call('POST', '/audit')).status).to.equal(405);
  });

  it('POST /rollouts delete to many needs "confirm" (true or the count); the dry run does not; warnings for --abort-min', async () => {
    const before = snapshot();
    const req = { action: 'delete', selector: { devices: ['opx-1', 'opx-2'] }, abort_percent: 10 };
    let r = await call('POST', '/rollouts', req);
    expect([r.status, r.body.error?.code]).to.deep.equal([400, 'E_CONFIRM']);
    expect(r.body.error?.message).to.match(/^delete to 2 devices wipes their keys .*confirm with "confirm": true \(or "confirm": N, the device count\)/);
    r = await call('POST', '/rollouts', { ...req, confirm: 3 });
    expect([r.status, r.body.error?.code]).to.deep.equal([400, 'E_CONFIRM']);
    expect(r.body.error?.message).to.match(/the count given, 3, is not 2/);
    r = await call('POST', '/rollouts', { ...req, confirm: 'yes' });
    expect([r.status, r.body.error?.code]).to.deep.equal([400, 'E_BAD_REQUEST']);
    expect(snapshot()).to.deep.equal(before);
    r = await call('POST', '/rollouts', { ...req, dry_run: true });
    expect(r.status).to.equal(200);
    expect(r.body.warnings).to.deep.equal([
      'the abort rule needs 10 results (--abort-min, abort_min_results) but the rollout has 2 target(s): it can never trip; lower --abort-min to 2 or less',
    ]);
    expect(snapshot()).to.deep.equal(before);
    r = await call('POST', '/rollouts', { ...req, confirm: 2 });
    expect(r.status, JSON.stringify(r.body)).to.equal(201);
    expect(r.body.warnings).to.have.length(1);
    const id = r.body.id as string;
    expect((await call('POST', `/rollouts/${id}/cancel`)).body).to.include({ state: 'cancelled' });
    r = await call('POST', '/rollouts', {
      action: 'selftest',
      selector: { devices: ['opx-1', 'opx-2'] },
      abort_percent: 10,
      abort_min_results: 2,
      dry_run: true,
    });
    expect(r.body.warnings).to.deep.equal([]);
  });

  it('POST /rollouts/{id}/retry: a new rollout over the targets that did not apply; running 409; delete to many needs confirm', async () => {
    const created = await call('POST', '/rollouts', {
      action: 'update',
      params: { sensor: { enabled: false } },
      selector: { devices: ['opx-1', 'opx-2', 'opx-3'] },
    });
    const id = created.body.id as string;
    let r = await call('POST', `/rollouts/${id}/retry`);
    expect([r.status, r.body.error?.code]).to.deep.equal([409, 'E_ROLLOUT_STATE']);
    await f.server.data.storage.rollouts.move(id, 'opx-3', ['pending'], 'applied');
    await call('POST', `/rollouts/${id}/cancel`);
    r = await call('POST', `/rollouts/${id}/retry`, { deliver_within_s: 600, dry_run: true });
    expect(r.status, JSON.stringify(r.body)).to.equal(200);
    expect(r.body).to.include({ dry_run: true, retry_of: id, in_flight_left_out: 0, removed_left_out: 0 });
    r = await call('POST', `/rollouts/${id}/retry`, { deliver_within_s: 600 });
    expect(r.status, JSON.stringify(r.body)).to.equal(201);
    expect(r.body).to.include({ retry_of: id, action: 'update', state: 'running' });
    expect(r.body.selector).to.deep.equal({ retryOf: id, states: ['rejected', 'failed', 'rolled_back', 'expired', 'cancelled', 'not sent'] });
    expect(r.body.counts).to.include({ pending: 2 });
    expect(r.body.params).to.deep.equal({ sensor: { enabled: false } });
    const retryId = r.body.id as string;
    expect((await call('POST', `/rollouts/${retryId}/retry`, { surprise: 1 })).body.error?.code).to.equal('E_BAD_REQUEST');
    await call('POST', `/rollouts/${retryId}/pause`);
    await call('POST', `/rollouts/${retryId}/resume`);
    await call('POST', `/rollouts/${retryId}/cancel`);

    const del = await call('POST', '/rollouts', { action: 'delete', selector: { devices: ['opx-1', 'opx-2'] }, confirm: true });
    await call('POST', `/rollouts/${del.body.id as string}/cancel`);
    const before = snapshot();
    r = await call('POST', `/rollouts/${del.body.id as string}/retry`, {});
    expect([r.status, r.body.error?.code]).to.deep.equal([400, 'E_CONFIRM']);
    expect(snapshot()).to.deep.equal(before);

    await eventually(() => logLines.some((l) => /^\S+Z info rollout\.retry /.test(l) && l.includes(`rollout=${retryId} `)), 5000, 'the retry logged');
  });

  it('serve logs each rollout created, paused, resumed, cancelled or aborted, one line each, whichever process made it', async () => {
    const line = (event: string, rollout: string): RegExp => new RegExp(`^\\S+Z (info|warn) ${event.replace('.', '\\.')} rollout=${rollout}( |$)`);
    const a = (await call('POST', '/rollouts', { action: 'selftest', selector: { devices: ['opx-1', 'opx-2'] } })).body.id as string;
    await call('POST', `/rollouts/${a}/pause`);
    await call('POST', `/rollouts/${a}/resume`);
    await call('POST', `/rollouts/${a}/cancel`);
    // Another process (the CLI) aborts one: serve learns it from the registry.
    const b = (await call('POST', '/rollouts', { action: 'selftest', selector: { devices: ['opx-3'] } })).body.id as string;
    await f.server.data.storage.rollouts.setState(b, ['running'], 'aborted', 'aborted elsewhere', 'cli');
    await eventually(() => logLines.some((l) => line('rollout.aborted', b).test(l)), 5000, 'the abort logged');
    for (const [event, rollout] of [
      ['rollout.created', a],
      ['rollout.paused', a],
      ['rollout.resumed', a],
      ['rollout.cancelled', a],
      ['rollout.created', b],
      ['rollout.aborted', b],
    ] as const) {
      expect(
        logLines.filter((l) => line(event, rollout).test(l)),
        `${event} ${rollout}`,
      ).to.have.length(1);
    }
    expect(logLines.find((l) => line('rollout.created', a).test(l))).to.match(/ action=selftest .*devices=2/);
    expect(logLines.find((l) => line('rollout.aborted', b).test(l))).to.match(/^\S+Z warn .*reason="aborted elsewhere" by=cli/);
  });
});
