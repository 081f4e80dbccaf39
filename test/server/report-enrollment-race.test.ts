/**
 * A first enrollment of a few boards over a real broker (aedes in process): each board's
 * `connect` report goes out before the server has recorded its enrollment (they arrive on
 * different sessions, as when the agent subscribes and reports while its enrollment is on its
 * way). The report is held and retried once the enrollment is recorded: no `report.dropped`
 * warning, and the board is online by that very report.
 */
import { expect } from 'chai';
import { bufferedLogger } from '../../lib/log.js';
import { presenceOf } from '../../server/core/presence.js';
import { eventually, makeSimDevice } from './sim-fleet.js';
import { startFixture, type Fixture } from './server-fixture.js';
import { everyAsync } from '../helpers/async-array.js';

describe('server: reports that race their own enrollment', function () {
  this.timeout(30_000);
  let f: Fixture | undefined;
  after(async () => {
    await f?.close();
  });

  it('a first enrollment of 5 boards, each reporting before its enrollment is recorded, logs no report.dropped warning', async () => {
    const logs = bufferedLogger('debug');
    f = await startFixture({ log: logs.logger });
    const fx = f;
    const storage = fx.server.data.storage;
    const boards = await Promise.all(Array.from({ length: 5 }, (_, i) => makeSimDevice(`race-${i}`)));
    const tokens = await Promise.all(boards.map(async (d) => (await storage.enrollment.createToken(d.id, 'alice', 600_000)).token));
    for (const d of boards) {
      fx.fleet.add(d);
      d.conn = 1;
      await fx.fleet.report(d, 'connect');
    }
    // The reports reached the server first (the race, made certain), then the enrollments.
    const ids = new Set(boards.map((d) => d.id));
    const handled = (): number =>
      fx.inbound.filter((r) => 'deviceId' in r && ids.has(r.deviceId)).length + fx.inbound.filter((r) => r.kind === 'dropped').length;
    await eventually(() => handled() >= boards.length, 10_000, 'the reports handled');
    for (const [i, d] of boards.entries()) await fx.fleet.enroll(d, tokens[i] as string);
    await eventually(() => boards.every((d) => d.provisioned), 15_000, 'every board enrolled and confirmed');
    expect(logs.lines.filter((l) => /^(WARN|ERROR) report\./.test(l))).to.deep.equal([]);
    await eventually(
      () => everyAsync(boards, async (d) => presenceOf((await storage.devices.require(d.id)).presence, storage.now()) === 'online'),
      15_000,
      'every board online by the report it sent before its enrollment was recorded',
    );
    expect(logs.lines.filter((l) => l.startsWith('DEBUG report.held')).length).to.be.at.least(1);
  });
});
