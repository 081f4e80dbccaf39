/**
 * The fleet page's query at 10,000 devices (DeviceStore.page + the JSON views GET /devices answers), on
 * SQLite and, when the PostgreSQL binaries are there, PostgreSQL:
 *   node dist/test/bench/fleet-page.js [DEVICES]
 * Each device has two keys, a tag, a report and a command (rows written with SQL: the registry's own calls
 * would take minutes for the set-up alone). Prints the median and the slowest of 20 runs of each query.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateEncryptionKey, generateSigningKey, toPublicJwk } from '../../protocol/index.js';
import { lastCommandView } from '../../server/http/fleet-routes.js';
import { deviceView } from '../../server/http/record-views.js';
import { openPostgresStorage, type PostgresStorage } from '../../server/storage/postgres/index.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import type { DevicePageQuery, Storage } from '../../server/storage/types.js';
import { postgresBin, startPgCluster } from '../helpers/pg-cluster.js';

const N = Number(process.argv[2] ?? 10_000);

interface Rows {
  devices: unknown[][];
  keys: unknown[][];
  tags: unknown[][];
  commands: unknown[][];
}

async function rows(now: number): Promise<Rows> {
  const sig = toPublicJwk(await generateSigningKey());
  const enc = toPublicJwk(await generateEncryptionKey());
  const out: Rows = { devices: [], keys: [], tags: [], commands: [] };
  for (let i = 0; i < N; i++) {
    const id = `dev-${String(i).padStart(6, '0')}`;
    const version = `1.${i % 7}.0`;
    const reported = JSON.stringify({
      reason: 'interval',
      iat: 1,
      agent_version: version,
      node_version: 'v20.19.0',
      last_seq: 1,
      kids: { sig: sig.kid, enc: enc.kid },
      settings_digest: `sha256:${'a'.repeat(64)}`,
      uptime_s: 100,
      selftest: null,
    });
    const seen = now - (i % 10) * 60_000;
    out.devices.push([
      id,
      `user-${i % 97}`,
      'provisioned',
      2,
      'jwks',
      now,
      now,
      seen,
      i % 10 < 3 ? 'online' : 'offline',
      60,
      reported,
      version,
      i % 500 === 0 ? now : null,
    ]);
    out.keys.push([id, `${sig.kid}-${i}`, 'sig', JSON.stringify(sig), 'current', now], [id, `${enc.kid}-${i}`, 'enc', JSON.stringify(enc), 'current', now]);
    out.tags.push([id, `wave-${i % 10}`, now]);
    out.commands.push([
      `jti-${i}`,
      id,
      'selftest',
      `user-${i % 97}`,
      `sha256:${'0'.repeat(64)}`,
      1,
      enc.kid,
      'sealed',
      now - 1000,
      now + 60_000,
      now - 500,
      'applied',
      'OK',
      now - 100,
    ]);
  }
  return out;
}

const DEVICE_COLS =
  'id, user_id, state, next_seq, origin, created_at, updated_at, last_seen_at, presence, report_interval_s, reported, agent_version, flagged_at';
const KEY_COLS = 'device_id, kid, use, jwk, status, added_at';
const TAG_COLS = 'device_id, tag, added_at';
const CMD_COLS = 'jti, device_id, action, user_id, params_digest, seq, encryption_kid, sealed, created_at, expires_at, sent_at, ack_status, ack_code, acked_at';

async function fillPg(s: PostgresStorage, r: Rows): Promise<void> {
  const insert = async (table: string, cols: string, values: unknown[][]): Promise<void> => {
    const width = cols.split(',').length;
    for (let i = 0; i < values.length; i += 1000) {
      const batch = values.slice(i, i + 1000);
      const ph = batch.map((_, j) => `(${Array.from({ length: width }, (_x, k) => `$${j * width + k + 1}`).join(', ')})`).join(', ');
      await s.pool.query(`INSERT INTO ${table} (${cols}) VALUES ${ph}`, batch.flat());
    }
  };
  await insert('devices', DEVICE_COLS, r.devices);
  await insert('device_keys', KEY_COLS, r.keys);
  await insert('device_tags', TAG_COLS, r.tags);
  await insert('commands', CMD_COLS, r.commands);
  await s.pool.query('ANALYZE');
}

const QUERIES: [string, Omit<DevicePageQuery, 'now'>][] = [
  ['first page of 50 by id', { limit: 50 }],
  ['page 100 of 50 by id (offset 4950)', { limit: 50, offset: 4950 }],
  ['page of 500 by last_seen desc', { limit: 500, sort: 'last_seen', dir: 'desc' }],
  ['q=00012 (substring), 50', { q: '00012', limit: 50 }],
  ['tag=wave-2 online=1 sorted by version, 50', { tag: 'wave-2', online: true, sort: 'version', limit: 50 }],
  ['version=1.3.0 sort=status, 50', { version: '1.3.0', sort: 'status', limit: 50 }],
  ['flagged=1, 50', { flagged: true, limit: 50 }],
];

async function bench(name: string, s: Storage): Promise<void> {
  for (const [label, q] of QUERIES) {
    const times: number[] = [];
    const storageTimes: number[] = [];
    let total = 0;
    for (let i = 0; i < 20; i++) {
      const t = performance.now();
      const now = Date.now();
      const page = await s.devices.page({ ...q, now });
      storageTimes.push(performance.now() - t);
      JSON.stringify({
        total: page.total,
        devices: page.items.map((x) => ({ ...deviceView(x.device, now), last_command: lastCommandView(x.lastCommand, now) })),
      });
      times.push(performance.now() - t);
      total = page.total;
    }
    times.sort((a, b) => a - b);
    storageTimes.sort((a, b) => a - b);
    console.log(
      `${name.padEnd(8)} ${label.padEnd(48)} total ${String(total).padStart(5)}  median ${(times[10] ?? 0).toFixed(1)} ms  max ${(times[19] ?? 0).toFixed(1)} ms (of which storage ${(storageTimes[10] ?? 0).toFixed(1)} ms)`,
    );
  }
}

async function main(): Promise<void> {
  const now = Date.now();
  const r = await rows(now);
  const dir = mkdtempSync(join(tmpdir(), 'fleet-bench-'));
  try {
    const s = openSqliteStorage(join(dir, 'registry.sqlite'), { create: true });
    const db = s.db;
    const ins = (table: string, cols: string, values: unknown[][]): void => {
      const st = db.prepare(
        `INSERT INTO ${table} (${cols}) VALUES (${cols
          .split(',')
          .map(() => '?')
          .join(', ')})`,
      );
      db.transaction(() => values.forEach((v) => st.run(...v)))();
    };
    ins('devices', DEVICE_COLS, r.devices);
    ins('device_keys', KEY_COLS, r.keys);
    ins('device_tags', TAG_COLS, r.tags);
    ins('commands', CMD_COLS, r.commands);
    db.exec('ANALYZE');
    await bench('sqlite', s);
    await s.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  if (!postgresBin()) return console.log('postgres: skipped (no PostgreSQL binaries)');
  const cluster = await startPgCluster();
  try {
    const s = await openPostgresStorage(await cluster.createDatabase('fleetbench'), { create: true });
    await fillPg(s, r);
    await bench('postgres', s);
    await s.close();
  } finally {
    await cluster.stop();
  }
}

await main();
