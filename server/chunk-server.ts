/**
 * The chunk server of `serve`: boards fetch a release's artifact over the
 * MQTT connection they already have. A board publishes a fetch request on
 * `PREFIX/ID/fetch` (protocol/transfer.ts: the chunk index, or up to 16
 * chunks from a number); the server answers with chunk frames on
 * `PREFIX/ID/chunk`, QoS 0 (a broker never queues megabytes for an offline
 * board: the board asks again for what did not come).
 *
 * Only a registered, non-decommissioned device that has an upgrade command
 * for that artifact in flight (sent, unanswered, not void, within its expiry
 * plus UPGRADE_FETCH_GRACE_MS) gets anything: the artifact is no secret (the
 * same bytes go to every board, integrity comes from the signed manifest),
 * but the broker and this server are not a public download service. Each
 * device is rate-limited (a token bucket, 4 requests a second, burst 8),
 * before anything is parsed. Chunks are read from the artifact file by
 * offset, never the whole file in memory. Refusals are counted and logged
 * as one line per 10 s at most. Nothing a board sends can make it throw.
 *
 * The release's files are read from this machine's DATA/releases/VERSION-ARCH/;
 * a serve sharing the registry with the machine that ran `release add` writes
 * that directory from the registry's copy first, verified
 * (releases/materialise.ts). A release with no files anywhere is refused
 * ('no-files', logged once per release as release.files_missing).
 */
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chunkTopic, encodeChunkFrame, isProtocolError, MAX_FETCH_CHUNKS, parseFetch, parseTopic, type FetchRequest } from '../protocol/index.js';
import type { Logger } from '../lib/log.js';
import type { ReleaseRecord } from './storage/records.js';
import type { Storage } from './storage/types.js';
import { ReportRateLimit, type ReportRateOptions } from './core/report-rate-limit.js';
import { ARTIFACT_FILE, INDEX_FILE, manifestOf } from './releases/store.js';
import { LocalReleases } from './releases/materialise.js';
import { errnoCode } from '../lib/durable-file.js';

export type ChunkPublish = (topic: string, payload: Buffer) => Promise<void>;

export interface ChunkServerOptions {
  storage: Storage;
  topicPrefix: string;
  publish: ChunkPublish;
  log: Logger;
  /** This machine's data directory: releases are read from (and written into) DATA/releases. Without it: the row's dir. */
  dataDir?: string;
  /** Per-device fetch rate (default 4 a second, burst 8). */
  rate?: ReportRateOptions;
  /** Interval of the refusal summary (default 10 s). */
  summaryMs?: number;
  now?: () => number;
}

export type ChunkRefusal = 'rate-limited' | 'malformed' | 'unknown-device' | 'no-release' | 'not-in-flight' | 'no-files' | 'out-of-range' | 'error';

export type ChunkResult =
  { kind: 'served'; deviceId: string; frames: number; index: boolean } | { kind: 'refused'; deviceId: string | null; why: ChunkRefusal } | { kind: 'ignored' };

export class ChunkServer {
  /** Totals since the start. */
  readonly counts: Record<ChunkRefusal | 'served' | 'frames', number> = {
    served: 0,
    frames: 0,
    'rate-limited': 0,
    malformed: 0,
    'unknown-device': 0,
    'no-release': 0,
    'not-in-flight': 0,
    'no-files': 0,
    'out-of-range': 0,
    error: 0,
  };
  readonly #o: ChunkServerOptions;
  readonly #rate: ReportRateLimit;
  readonly #now: () => number;
  readonly #summaryMs: number;
  readonly #local: LocalReleases;
  #window: Partial<Record<ChunkRefusal, number>> = {};
  #windowDevices = new Set<string>();
  #lastSummary = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: ChunkServerOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#rate = new ReportRateLimit({ burst: 8, perSecond: 4, ...options.rate, now: this.#now });
    this.#summaryMs = options.summaryMs ?? 10_000;
    this.#local = new LocalReleases({
      storage: options.storage,
      log: options.log,
      now: this.#now,
      ...(options.dataDir !== undefined ? { dataDir: options.dataDir } : {}),
    });
  }

  /** Handles one message of the fetch subscription. Never throws. */
  async handle(topic: string, payload: Buffer): Promise<ChunkResult> {
    let deviceId: string | null = null;
    let release: ReleaseRecord | undefined;
    try {
      const parsed = parseTopic(this.#o.topicPrefix, topic);
      if (!parsed || parsed.kind !== 'fetch') return { kind: 'ignored' };
      deviceId = parsed.deviceId;
      if (!this.#rate.take(deviceId)) return this.#refuse(deviceId, 'rate-limited');
      let req: FetchRequest;
      try {
        req = parseFetch(payload);
      } catch (err) {
        if (isProtocolError(err)) return this.#refuse(deviceId, 'malformed');
        throw err;
      }
      const { storage } = this.#o;
      const device = await storage.devices.get(deviceId);
      if (!device || device.state === 'decommissioned') return this.#refuse(deviceId, 'unknown-device');
      release = await storage.releases.bySha256(req.sha256);
      if (!release) return this.#refuse(deviceId, 'no-release');
      if (!(await storage.releases.upgradeInFlight(deviceId, req.sha256))) return this.#refuse(deviceId, 'not-in-flight');
      const dir = await this.#local.dirOf(release);
      if (dir === undefined) return this.#refuse(deviceId, 'no-files');
      const frames = 'index' in req ? await this.#sendIndex(deviceId, release, dir) : await this.#sendChunks(deviceId, release, dir, req.from, req.count);
      if (frames === 0) return this.#refuse(deviceId, 'out-of-range');
      this.counts.served += 1;
      this.counts.frames += frames;
      return { kind: 'served', deviceId, frames, index: 'index' in req };
    } catch (err) {
      // The directory went away under us (deleted by hand): look again next time.
      if (release && errnoCode(err) === 'ENOENT') this.#local.forget(release.id);
      this.#o.log.warn('fetch.error', { device: deviceId, reason: err instanceof Error ? err.message : String(err) });
      return this.#refuse(deviceId, 'error');
    }
  }

  close(): void {
    this.#summary();
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  async #sendIndex(deviceId: string, release: ReleaseRecord, dir: string): Promise<number> {
    const index = await readFile(join(dir, INDEX_FILE));
    await this.#o.publish(chunkTopic(this.#o.topicPrefix, deviceId), encodeChunkFrame({ sha256: release.sha256, kind: 'index', number: 0, data: index }));
    return 1;
  }

  async #sendChunks(deviceId: string, release: ReleaseRecord, dir: string, from: number, count: number): Promise<number> {
    const m = manifestOf(release);
    const last = Math.min(m.chunks.count, from + Math.min(count, MAX_FETCH_CHUNKS));
    if (from >= last) return 0;
    const fh = await open(join(dir, ARTIFACT_FILE), 'r');
    const topic = chunkTopic(this.#o.topicPrefix, deviceId);
    let sent = 0;
    try {
      for (let n = from; n < last; n++) {
        const len = Math.min(m.chunks.bytes, m.artifact.bytes - n * m.chunks.bytes);
        const buf = Buffer.alloc(len);
        const { bytesRead } = await fh.read(buf, 0, len, n * m.chunks.bytes);
        if (bytesRead !== len) throw new Error(`${dir}/${ARTIFACT_FILE} is shorter than its manifest says`);
        await this.#o.publish(topic, encodeChunkFrame({ sha256: release.sha256, kind: 'chunk', number: n, data: buf }));
        sent += 1;
      }
    } finally {
      await fh.close();
    }
    return sent;
  }

  #refuse(deviceId: string | null, why: ChunkRefusal): ChunkResult {
    this.counts[why] += 1;
    this.#window[why] = (this.#window[why] ?? 0) + 1;
    if (deviceId !== null && this.#windowDevices.size < 10) this.#windowDevices.add(deviceId);
    // One line per interval at most: a board (or anyone with broker access) sending garbage must not flood the log.
    const now = this.#now();
    if (now - this.#lastSummary >= this.#summaryMs) this.#summary();
    else if (!this.#timer) {
      this.#timer = setTimeout(
        () => {
          this.#timer = undefined;
          this.#summary();
        },
        this.#summaryMs - (now - this.#lastSummary),
      );
      this.#timer.unref();
    }
    return { kind: 'refused', deviceId, why };
  }

  #summary(): void {
    const w = this.#window;
    if (Object.keys(w).length === 0) return;
    this.#lastSummary = this.#now();
    this.#o.log.warn('fetch.refused', { ...w, devices: [...this.#windowDevices].join(','), interval_s: Math.round(this.#summaryMs / 1000) });
    this.#window = {};
    this.#windowDevices = new Set();
  }
}
