/**
 * Planning a rollout over 100,000 devices (POST /rollouts, a dry run then the
 * real one) does not hold up the server's event loop for seconds, and memory
 * does not grow with the fleet: the selector is resolved inside SQLite, the dry
 * run counts there and lists a bounded sample. The devices are written
 * straight into a real registry file (one transaction); the HTTP API is the
 * real one on loopback.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Server } from 'node:http';
import { silentLogger } from '../../lib/log.js';
import { KeyRing, generateEncryptionKey, generateSigningKey, toJwkSet, toPublicJwk } from '../../protocol/index.js';
import { CommandSender } from '../../server/core/command-sender.js';
import { createHttpApi } from '../../server/http/http-api.js';
import { openSqliteStorage, type SqliteStorage } from '../../server/storage/sqlite/index.js';
import type { ServerKeys } from '../../server/keys/server-keys.js';

const DEVICES = 100_000;
const TOKEN = 'big-plan-token';

describe('server: planning a rollout over 100,000 devices', function () {
  this.timeout(120_000);
  let dir: string;
  let storage: SqliteStorage;
  let server: Server;
  let base: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rollout-big-'));
    storage = openSqliteStorage(join(dir, 'registry.sqlite'), { create: true });
    const [signing, encryption] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
    const keys: ServerKeys = {
      dir,
      serverId: 'big-server',
      signing,
      encryption,
      trust: toJwkSet([signing, encryption]),
      decryption: await KeyRing.create([encryption]),
    };
    const board = toPublicJwk(await generateEncryptionKey());
    const now = Date.now();
    storage.db
      .transaction(() => {
        const device = storage.db.prepare(
          "INSERT INTO devices (id, user_id, state, origin, created_at, updated_at, last_seen_at, presence, report_interval_s) VALUES (?, 'fleet', 'provisioned', 'jwks', ?, ?, ?, ?, 300)",
        );
        const key = storage.db.prepare("INSERT INTO device_keys (device_id, kid, use, jwk, status, added_at) VALUES (?, ?, 'enc', ?, 'current', ?)");
        const jwk = JSON.stringify(board);
        for (let i = 0; i < DEVICES; i++) {
          const id = `big-${String(i).padStart(6, '0')}`;
          // A third never reported, a third online, a third offline.
          device.run(id, now, now, i % 3 === 0 ? null : now, i % 3 === 0 ? null : i % 3 === 1 ? 'online' : 'offline');
          key.run(id, board.kid, jwk, now);
        }
      })
      .immediate();
    const sender = new CommandSender({ storage, keys, topicPrefix: 'provision', publish: async () => undefined });
    server = createHttpApi({ storage, keys, sender, token: TOKEN, log: silentLogger });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    await storage?.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** POSTs /rollouts and measures the longest event-loop stall and the growth of the peak RSS meanwhile. */
  async function post(body: unknown): Promise<{ status: number; body: Record<string, unknown>; stallMs: number; rssGrowthMb: number }> {
    const delay = monitorEventLoopDelay({ resolution: 10 });
    const peakBefore = process.resourceUsage().maxRSS;
    delay.enable();
    const res = await fetch(`${base}/rollouts`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const parsed = (await res.json()) as Record<string, unknown>;
    delay.disable();
    return { status: res.status, body: parsed, stallMs: delay.max / 1e6, rssGrowthMb: (process.resourceUsage().maxRSS - peakBefore) / 1024 };
  }

  it('the dry run and the rollout each stall the event loop well under a second, and the peak RSS grows by less than 100 MB', async () => {
    const dry = await post({ action: 'selftest', selector: { all: true }, dry_run: true });
    const started = await post({ action: 'selftest', selector: { all: true } });
    process.stderr.write(
      `      ${DEVICES} devices: dry run stalled ${dry.stallMs.toFixed(0)} ms (+${dry.rssGrowthMb.toFixed(0)} MB peak RSS), start ${started.stallMs.toFixed(0)} ms (+${started.rssGrowthMb.toFixed(0)} MB)\n`,
    );
    expect(dry.status, JSON.stringify(dry.body).slice(0, 300)).to.equal(200);
    expect(started.status, JSON.stringify(started.body).slice(0, 300)).to.equal(201);
    expect(dry.stallMs, 'longest event-loop stall of the dry run (ms)').to.be.below(1000);
    expect(started.stallMs, 'longest event-loop stall of POST /rollouts (ms)').to.be.below(1000);
    expect(dry.rssGrowthMb + started.rssGrowthMb, 'growth of the peak RSS (MB)').to.be.below(100);
    // The dry run counts every target and lists a bounded sample; the rollout has every target.
    expect(dry.body.summary).to.deep.equal({ targets: DEVICES, online: 33_333, offline: 33_333, unknown: 33_334, not_sendable: 0 });
    expect((dry.body.targets as unknown[]).length).to.be.at.most(1000);
    const r = await storage.rollouts.require(started.body.id as string);
    expect(r).to.include({ state: 'running', planning: false });
    expect(await storage.rollouts.counts(r.id)).to.include({ pending: DEVICES });
  });
});
