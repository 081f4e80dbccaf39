/**
 * Every audit row written because of an HTTP request names who made it (`by`),
 * against a real `serve` (aedes, SQLite, a simulated board that acks): a command
 * (`via: 'http'`), tags, a rollout created, paused, resumed, cancelled and
 * retried; GET /audit shows `by` on each row; the legacy token acts as `http-token`.
 */
import { expect } from 'chai';
import { toPublicJwk } from '../../protocol/index.js';
import { eventually, makeSimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { addOperators, ApiClient, legacyToken, PASSWORD } from './http-auth-client.js';

interface AuditRow {
  event: string;
  device_id: string | null;
  by: string | null;
  detail: Record<string, unknown>;
}

describe('server: HTTP API audit rows name the principal (by)', function () {
  this.timeout(30_000);
  let f: Fixture;
  let base: string;

  before(async () => {
    f = await startFixture({ http: { host: '127.0.0.1', port: 0 } });
    base = `http://127.0.0.1:${f.server.http?.port}`;
    await addOperators(f.server.data.storage, { otto: 'operator' });
    const live = f.fleet.add(await makeSimDevice('by-live'));
    const away = await makeSimDevice('by-away'); // registered, never connected: its rollout command stays unanswered
    const refuser = f.fleet.add(await makeSimDevice('by-reject', 'reject'));
    for (const [id, d] of [
      ['by-live', live],
      ['by-away', away],
      ['by-reject', refuser],
    ] as const) {
      await f.server.data.storage.devices.add({
        id,
        userId: 'u1',
        origin: 'jwks',
        signing: toPublicJwk(d.signing),
        encryption: toPublicJwk(d.encryption),
        state: 'provisioned',
      });
    }
  });
  after(async () => {
    await f.close();
  });

  it('a command, tags and a rollout with its controls and retry, each audited once with by: otto; GET /audit shows by', async () => {
    const otto = new ApiClient(base);
    expect((await otto.login('otto', PASSWORD)).status).to.equal(200);
    const sent = await otto.call('POST', '/devices/by-live/commands', { body: { action: 'selftest' } });
    expect(sent.status).to.equal(202);
    await eventually(async () => (await f.server.data.storage.commands.get(sent.body.jti as string))?.ackStatus === 'applied');
    expect((await otto.call('PUT', '/devices/by-live/tags/lab')).status).to.equal(200);
    expect((await otto.call('DELETE', '/devices/by-live/tags/lab')).status).to.equal(200);
    const rollout = await otto.call('POST', '/rollouts', { body: { action: 'selftest', selector: { devices: ['by-away'] } } });
    expect(rollout.status, JSON.stringify(rollout.body)).to.equal(201);
    const id = rollout.body.id as string;
    for (const control of ['pause', 'resume', 'cancel']) expect((await otto.call('POST', `/rollouts/${id}/${control}`)).status, control).to.equal(200);
    // A rollout whose target rejects finishes; its retry is a new rollout.
    const rejected = await otto.call('POST', '/rollouts', { body: { action: 'selftest', selector: { devices: ['by-reject'] } } });
    expect(rejected.status, JSON.stringify(rejected.body)).to.equal(201);
    const rid = rejected.body.id as string;
    await eventually(async () => (await f.server.data.storage.rollouts.require(rid)).finishedAt !== null);
    const retry = await otto.call('POST', `/rollouts/${rid}/retry`, { body: {} });
    expect(retry.status, JSON.stringify(retry.body)).to.equal(201);

    const legacy = new ApiClient(base, { bearer: await legacyToken(f.dataDir) });
    expect((await legacy.call('PUT', '/devices/by-away/tags/ops')).status).to.equal(200);

    const rows = (await legacy.call('GET', '/audit?limit=1000')).body.audit as AuditRow[];
    const mine = rows.filter((r) => r.by === 'otto').map((r) => r.event);
    expect(mine).to.deep.equal([
      'session.create',
      'command.create',
      'device.tag.add',
      'device.tag.remove',
      'rollout.create',
      'rollout.pause',
      'rollout.resume',
      'rollout.cancel',
      'rollout.create',
      'rollout.create',
      'rollout.retry',
    ]);
    const command = rows.find((r) => r.event === 'command.create' && r.device_id === 'by-live');
    expect(command?.detail).to.include({ via: 'http', by: 'otto', jti: sent.body.jti });
    // Each row once: no second audit row for the same change.
    expect(rows.filter((r) => r.event === 'command.create' && r.device_id === 'by-live')).to.have.length(1);
    expect(rows.filter((r) => r.event === 'rollout.create')).to.have.length(3);
    expect(rows.filter((r) => r.by === 'http-token').map((r) => [r.event, r.device_id])).to.deep.equal([['device.tag.add', 'by-away']]);
    // Rows of the rollout engine's own sending name no HTTP principal.
    const engineRows = rows.filter((r) => r.event === 'command.create' && r.device_id === 'by-away');
    expect(engineRows.length).to.be.greaterThan(0);
    expect(engineRows.every((r) => r.by === null)).to.equal(true);
  });
});
