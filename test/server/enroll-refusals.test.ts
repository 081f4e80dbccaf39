/** Refused enrollments in the audit: aggregated per device topic, code and window; bounded by maxKeys. */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ENROLL_REFUSED_EVENT, EnrollRefusals } from '../../server/core/enroll-refusals.js';
import { silentLogger, sinkLogger, type LogLevel } from '../../lib/log.js';
import { openSqliteStorage, type SqliteStorage } from '../../server/storage/sqlite/index.js';

describe('server: refused enrollments are aggregated in the audit', () => {
  let dir: string;
  let now = 1_700_000_000_000;
  let storage: SqliteStorage;
  const lines: { level: LogLevel; event: string }[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'enroll-refusals-'));
    storage = openSqliteStorage(join(dir, 'registry.sqlite'), { create: true, now: () => now });
    lines.length = 0;
  });
  afterEach(async () => {
    await storage.close();
    await rm(dir, { recursive: true, force: true });
  });

  const rows = async () => (await storage.audit.log({ limit: 10_000 })).filter((a) => a.event === ENROLL_REFUSED_EVENT);

  it('writes the first refusal per device and code at once, the rest of the window as one row with a count', async () => {
    const r = new EnrollRefusals(
      storage,
      sinkLogger((level, event) => lines.push({ level, event })),
      { windowMs: 60_000 },
    );
    for (let i = 0; i < 500; i++) await r.refused('dev-a', 'E_TOKEN_INVALID', 'the enrollment token is unknown', true);
    await r.refused('dev-a', 'E_TOKEN_USED', 'used', true);
    for (let i = 0; i < 50; i++) await r.refused('dev-b', 'E_SIGNATURE', 'bad signature', false);
    expect((await rows()).map((a) => [a.deviceId, a.detail.code, a.detail.count])).to.deep.equal([
      ['dev-a', 'E_TOKEN_INVALID', 1],
      ['dev-a', 'E_TOKEN_USED', 1],
    ]);
    now += 30_000;
    await r.flush();
    expect(await rows()).to.have.length(2); // the window is still open
    now += 30_000;
    await r.flush();
    const after = await rows();
    expect(after.map((a) => [a.deviceId, a.detail.code, a.detail.count, a.detail.aggregated])).to.deep.equal([
      ['dev-a', 'E_TOKEN_INVALID', 1, undefined],
      ['dev-a', 'E_TOKEN_USED', 1, undefined],
      ['dev-a', 'E_TOKEN_INVALID', 499, true],
    ]);
    // Garbage that did not open (dev-b) is logged, never audited: one line, then one summary.
    expect(lines.filter((l) => l.event === 'enroll.dropped')).to.have.length(3);
    expect(lines.filter((l) => l.event === 'enroll.dropped.summary')).to.have.length(2);
    // A new window starts with an immediate row again.
    await r.refused('dev-a', 'E_TOKEN_INVALID', 'again', true);
    expect(await rows()).to.have.length(4);
    await r.close();
  });

  it('tracks at most maxKeys devices per window; the rest are counted per code without a device id, and close() flushes all', async () => {
    const r = new EnrollRefusals(storage, silentLogger, { windowMs: 60_000, maxKeys: 3 });
    for (let d = 0; d < 100; d++) for (let i = 0; i < 2; i++) await r.refused(`dev-${d}`, 'E_TOKEN_INVALID', 'unknown', true);
    await r.close();
    const all = await rows();
    expect(all.length).to.equal(3 + 3 + 1);
    expect(all.filter((a) => a.deviceId === null).map((a) => a.detail.count)).to.deep.equal([97 * 2]);
    expect(all.reduce((n, a) => n + (a.detail.count as number), 0)).to.equal(200);
  });
});
