/**
 * The engine honours a pause or cancel that lands while it is stepping another
 * rollout (an HTTP request handled while a batch is being sealed, or the CLI
 * in another process): the rollout's state is read when its step begins, not
 * when the tick listed the rollouts.
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../lib/log.js';
import { CommandSender, type SendRequest } from '../../server/core/command-sender.js';
import type { ServerKeys } from '../../server/keys/server-keys.js';
import { KeyRing, generateEncryptionKey, generateSigningKey, toJwkSet } from '../../protocol/index.js';
import { openSqliteStorage, type SqliteStorage } from '../../server/storage/sqlite/index.js';
import type { Storage } from '../../server/storage/types.js';
import type { CommandRecord, RolloutSpec } from '../../server/storage/records.js';
import { RolloutEngine } from '../../server/rollouts/engine.js';
import { eventually } from './sim-fleet.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Seals nothing for real: records who was sealed to, and holds the seal for `dev-first` until the gate opens. */
class GatedSender extends CommandSender {
  readonly sealed: string[] = [];
  readonly #gate: Promise<void>;

  constructor(storage: Storage, keys: ServerKeys, gate: Promise<void>) {
    super({ storage, keys, topicPrefix: 'provision', publish: async () => undefined });
    this.#gate = gate;
  }

  override async seal(req: SendRequest): Promise<{ command: CommandRecord; token: string }> {
    this.sealed.push(req.deviceId);
    if (req.deviceId === 'dev-first') await this.#gate;
    return { command: { jti: randomUUID() } as CommandRecord, token: 'sealed' };
  }

  override async publish(): Promise<void> {}
}

async function serverKeys(): Promise<ServerKeys> {
  const [signing, encryption] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
  return { dir: '', serverId: 'test-server', signing, encryption, trust: toJwkSet([signing, encryption]), decryption: await KeyRing.create([encryption]) };
}

describe('server: rollout engine and controls that land mid-step', () => {
  let dir: string;
  let storage: SqliteStorage;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rollout-engine-'));
    storage = openSqliteStorage(join(dir, 'registry.sqlite'), { create: true });
  });
  after(async () => {
    await storage?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('a rollout paused or cancelled while another one seals is not sent to, and stays cancelled', async () => {
    const spec = (device: string): RolloutSpec => ({
      action: 'selftest',
      params: {},
      selector: { devices: [device] },
      ttlSeconds: 60,
      deadlineAt: Date.now() + 60_000,
      abortMin: 10,
      concurrency: 8,
    });
    // Listed newest first: `first` is stepped before the two others.
    const paused = await storage.rollouts.create(spec('dev-paused'), ['dev-paused']);
    const cancelled = await storage.rollouts.create(spec('dev-cancelled'), ['dev-cancelled']);
    await sleep(10);
    const first = await storage.rollouts.create(spec('dev-first'), ['dev-first']);
    let release: () => void = () => undefined;
    const sender = new GatedSender(storage, await serverKeys(), new Promise<void>((r) => (release = r)));
    const sealed = sender.sealed;
    const engine = new RolloutEngine({ storage, sender, log: silentLogger, tickMs: 60_000 });
    engine.start();
    try {
      await eventually(() => sealed.includes('dev-first'), 5000, 'the first rollout sealing');
      await storage.rollouts.setState(paused.id, ['running'], 'paused', 'test', 'test');
      await storage.rollouts.setState(cancelled.id, ['running'], 'cancelled', 'test', 'test');
      release();
      await engine.idle();
      expect(sealed).to.deep.equal(['dev-first']);
      expect(await storage.rollouts.require(paused.id)).to.include({ state: 'paused', finishedAt: null });
      expect(await storage.rollouts.counts(paused.id)).to.include({ pending: 1 });
      expect((await storage.rollouts.require(cancelled.id)).state).to.equal('cancelled');
      expect((await storage.rollouts.require(cancelled.id)).finishedAt).to.be.a('number');
      expect(await storage.rollouts.counts(first.id)).to.include({ sent: 1 });
    } finally {
      await engine.stop();
    }
  });

  it('finishing a rollout cancelled meanwhile (by another process) keeps it cancelled; a running one completes', async () => {
    const spec: RolloutSpec = {
      action: 'selftest',
      params: {},
      selector: { all: true },
      ttlSeconds: 60,
      deadlineAt: Date.now() + 60_000,
      abortMin: 10,
      concurrency: 8,
    };
    const c = await storage.rollouts.create(spec, ['dev-x']);
    await storage.rollouts.setState(c.id, ['running'], 'cancelled', 'test', 'test');
    await storage.rollouts.finish(c.id, 'completed', 'every target answered or ended');
    expect(await storage.rollouts.require(c.id)).to.include({ state: 'cancelled' });
    const finished = (await storage.audit.log({ limit: 50 })).find((a) => a.event === 'rollout.finished' && a.detail.rollout_id === c.id);
    expect(finished?.detail).to.include({ state: 'cancelled' });
    const r = await storage.rollouts.create(spec, ['dev-y']);
    await storage.rollouts.finish(r.id, 'completed', 'every target answered or ended');
    expect(await storage.rollouts.require(r.id)).to.include({ state: 'completed', stateReason: 'every target answered or ended' });
  });
});
