/**
 * The artifact download over MQTT (protocol/transfer.ts): the agent asks on
 * its fetch topic (QoS 0) and the server answers with frames on its chunk
 * topic (QoS 0). First the chunk index, checked against the signed manifest;
 * then windows of WINDOW chunks, each chunk's SHA-256 checked against the
 * index BEFORE it is written, written in order to `upgrade/VERSION.part` and
 * fsynced at the end of each window. What did not come is asked again after
 * REQUEST_TIMEOUT; a chunk (or the index) that mismatches MAX_MISMATCH times
 * fails the download (E_UPGRADE_CHUNK), and so does STALL of connected time
 * without progress (E_UPGRADE_DOWNLOAD).
 *
 * Resumable: `prepare` re-checks what is on disk (the index against the
 * manifest, the .part chunk by chunk against the index), truncates at the
 * first chunk that does not match and continues from there. At most one
 * window of chunks is held in memory.
 */
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { checkChunkIndex, chunkMatches, CodedError, type ChunkFrame, type FetchRequest, type ReleaseManifest } from '../../protocol/index.js';
import type { Logger } from '../../lib/log.js';
import { readSafeFile, removeFiles, upgradePaths, type UpgradePaths } from './files.js';
import { writeFileAtomic } from '../../lib/durable-file.js';

export const WINDOW = 8;
export const MAX_MISMATCH = 3;
/**
 * serve answers at most 4 fetch requests a second per board (a token bucket,
 * burst 8: server/chunk-server.ts) and drops the rest unanswered: requests are
 * spaced by this much, so a long download never waits out the request timeout
 * for a dropped one (unpaced, every 8 windows stalled 15 s: a 44 MB release
 * took minutes instead of seconds).
 */
export const MIN_REQUEST_INTERVAL_MS = 300;

export interface DownloadTimings {
  /** A request unanswered this long is sent again (default 15 s). */
  requestTimeoutMs: number;
  /** Connected time without progress before giving up (default 10 min). */
  stallMs: number;
}

export const DEFAULT_DOWNLOAD_TIMINGS: DownloadTimings = { requestTimeoutMs: 15_000, stallMs: 10 * 60_000 };

export type UpgradeFailureCode = 'E_UPGRADE_CHUNK' | 'E_UPGRADE_DOWNLOAD' | 'E_UPGRADE_ARTIFACT' | 'E_UPGRADE_SPACE' | 'E_UPGRADE_INSTALL';

/** The download (or staging) failed: the upgrade is acked `failed` with this code, partial files removed. */
export class UpgradeFailure extends CodedError<UpgradeFailureCode> {
  override readonly name = 'UpgradeFailure';
}

export interface DownloadOptions {
  dir: string;
  version: string;
  manifest: ReleaseManifest;
  /** Publishes a fetch request (QoS 0); rejects while offline. */
  fetch: (req: FetchRequest) => Promise<void>;
  log: Logger;
  timings?: Partial<DownloadTimings>;
  /** Called after every window written (chunks done, total). */
  onProgress?: (done: number, total: number) => void;
}

/** One artifact's download; `run` resolves once every chunk is on disk (fsynced), rejects with UpgradeFailure. */
export class ChunkDownload {
  readonly #o: DownloadOptions;
  readonly #paths: UpgradePaths;
  readonly #t: DownloadTimings;
  readonly #m: ReleaseManifest;
  #index: Buffer | undefined;
  #done = 0;
  #windowEnd = 0;
  readonly #window = new Map<number, Buffer>();
  readonly #mismatches = new Map<number, number>();
  #fh: FileHandle | undefined;
  #timer: NodeJS.Timeout | undefined;
  #lastRequestAt = 0;
  #online = false;
  #lastProgress = Date.now();
  #pausedAt: number | undefined = Date.now();
  #flushing = false;
  #finished = false;
  #resolve!: () => void;
  #reject!: (err: Error) => void;
  readonly #result: Promise<void>;

  constructor(o: DownloadOptions) {
    this.#o = o;
    this.#paths = upgradePaths(o.dir);
    this.#t = { ...DEFAULT_DOWNLOAD_TIMINGS, ...o.timings };
    this.#m = o.manifest;
    this.#result = new Promise<void>((res, rej) => {
      this.#resolve = res;
      this.#reject = rej;
    });
    this.#result.catch(() => undefined);
  }

  get done(): number {
    return this.#done;
  }

  get total(): number {
    return this.#m.chunks.count;
  }

  /** Opens the .part, keeping what on disk still matches (a resumed download). */
  async prepare(): Promise<void> {
    const v = this.#o.version;
    const stored = await readSafeFile(this.#paths.index(v), this.#m.chunks.count * 32).catch(() => undefined);
    if (stored !== undefined) {
      try {
        checkChunkIndex(this.#m, stored);
        this.#index = Buffer.from(stored);
      } catch {
        this.#o.log.warn('stored chunk index does not match the manifest: fetched again');
      }
    }
    const fh = await open(this.#paths.part(v), constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
    this.#fh = fh;
    const st = await fh.stat();
    if (!st.isFile()) throw new UpgradeFailure('E_UPGRADE_DOWNLOAD', `${this.#paths.part(v)} is not a regular file`);
    let good = 0;
    if (this.#index !== undefined && st.size > 0) {
      const buf = Buffer.alloc(this.#m.chunks.bytes);
      for (; good < this.#m.chunks.count; good++) {
        const len = this.#chunkLength(good);
        const { bytesRead } = await fh.read(buf, 0, len, good * this.#m.chunks.bytes);
        if (bytesRead !== len || !chunkMatches(this.#index, good, buf.subarray(0, len))) break;
      }
    }
    const keep = Math.min(st.size, good * this.#m.chunks.bytes);
    if (keep !== st.size) await fh.truncate(keep);
    this.#done = good;
    if (good > 0) this.#o.log.info('upgrade download resumed', { version: v, chunks_done: good, total: this.#m.chunks.count });
  }

  /** Starts (or keeps) asking; resolves when complete. */
  run(): Promise<void> {
    if (this.#done === this.#m.chunks.count && this.#index !== undefined) void this.#complete();
    return this.#result;
  }

  /** The session is connected and subscribed: ask for what is missing now. */
  online(): void {
    if (this.#finished) return;
    this.#online = true;
    if (this.#pausedAt !== undefined) {
      this.#lastProgress += Date.now() - this.#pausedAt; // only connected time counts towards the stall
      this.#pausedAt = undefined;
    }
    this.#request();
  }

  offline(): void {
    this.#online = false;
    this.#pausedAt ??= Date.now();
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** Stops without deciding (the agent stops): files stay for a resume. */
  async close(): Promise<void> {
    this.#finished = true;
    clearTimeout(this.#timer);
    await this.#fh?.close().catch(() => undefined);
    this.#fh = undefined;
  }

  /** A frame from the chunk topic (already parsed). Frames of another artifact, or not asked for, are ignored. */
  onFrame(f: ChunkFrame): void {
    if (this.#finished || f.sha256 !== this.#m.artifact.sha256) return;
    if (f.kind === 'index') return void this.#onIndex(f.data);
    const idx = this.#index;
    const n = f.number;
    if (idx === undefined || n < this.#done || n >= this.#windowEnd || this.#window.has(n)) return;
    if (f.data.byteLength !== this.#chunkLength(n) || !chunkMatches(idx, n, f.data)) {
      if (this.#mismatch(n, `chunk ${n} does not match the signed manifest`)) void this.#send({ v: 1, sha256: this.#m.artifact.sha256, from: n, count: 1 });
      return;
    }
    this.#window.set(n, Buffer.from(f.data)); // a copy: the frame is a view of the MQTT packet
    void this.#flush();
  }

  #chunkLength(n: number): number {
    const { bytes, count } = this.#m.chunks;
    return n < count - 1 ? bytes : this.#m.artifact.bytes - (count - 1) * bytes;
  }

  /** Counts a mismatch; fails the download at MAX_MISMATCH. True when it may be asked again. */
  #mismatch(n: number, why: string): boolean {
    const times = (this.#mismatches.get(n) ?? 0) + 1;
    this.#mismatches.set(n, times);
    this.#o.log.warn('upgrade chunk refused', { chunk: n < 0 ? 'index' : n, times, why });
    if (times >= MAX_MISMATCH) {
      void this.#fail(new UpgradeFailure('E_UPGRADE_CHUNK', `${n < 0 ? 'the chunk index' : `chunk ${n}`} did not match the signed manifest ${times} times`));
      return false;
    }
    return true;
  }

  #onIndex(data: Buffer): void {
    if (this.#index !== undefined) return;
    try {
      checkChunkIndex(this.#m, data);
    } catch (err) {
      if (this.#mismatch(-1, (err as Error).message)) void this.#send({ v: 1, sha256: this.#m.artifact.sha256, index: true });
      return;
    }
    const index = Buffer.from(data);
    this.#index = index;
    this.#progressed();
    void writeFileAtomic(this.#paths.index(this.#o.version), index, { mode: 0o600 })
      .catch((err: unknown) => this.#o.log.warn('chunk index not stored (fetched again after a restart)', { reason: (err as Error).message }))
      .then(() => {
        if (this.#done === this.#m.chunks.count) return this.#complete();
        this.#request();
      });
  }

  #progressed(): void {
    this.#lastProgress = Date.now();
  }

  /** Writes the chunks that follow what is on disk, in order; at the window's end fsyncs and asks for the next. */
  async #flush(): Promise<void> {
    if (this.#flushing) return;
    this.#flushing = true;
    try {
      const fh = this.#fh;
      if (!fh) return;
      let wrote = false;
      for (let chunk = this.#window.get(this.#done); chunk !== undefined && !this.#finished; chunk = this.#window.get(this.#done)) {
        const n = this.#done;
        let off = 0;
        while (off < chunk.length) {
          const { bytesWritten } = await fh.write(chunk, off, chunk.length - off, n * this.#m.chunks.bytes + off);
          off += bytesWritten;
        }
        this.#window.delete(n);
        this.#done = n + 1;
        wrote = true;
      }
      if (!wrote || this.#finished) return;
      this.#progressed();
      if (this.#done >= this.#windowEnd) {
        await fh.sync();
        this.#o.onProgress?.(this.#done, this.#m.chunks.count);
        if (this.#done === this.#m.chunks.count) await this.#complete();
        else this.#request();
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      await this.#fail(
        new UpgradeFailure(code === 'ENOSPC' ? 'E_UPGRADE_SPACE' : 'E_UPGRADE_DOWNLOAD', `writing the download failed: ${(err as Error).message}`),
      );
    } finally {
      this.#flushing = false;
    }
    if (this.#window.has(this.#done)) void this.#flush();
  }

  /** Asks for the index, or for what is missing of the current window (opening the next one when it is done). */
  #request(): void {
    if (this.#finished || !this.#online) return;
    const sha256 = this.#m.artifact.sha256;
    if (this.#index === undefined) return void this.#send({ v: 1, sha256, index: true });
    if (this.#done >= this.#windowEnd) {
      this.#windowEnd = Math.min(this.#done + WINDOW, this.#m.chunks.count);
      this.#window.clear();
    }
    let first = -1;
    let last = -1;
    for (let n = this.#done; n < this.#windowEnd; n++) {
      if (this.#window.has(n)) continue;
      if (first < 0) first = n;
      last = n;
    }
    if (first < 0) return;
    void this.#send({ v: 1, sha256, from: first, count: last - first + 1 });
  }

  async #send(req: FetchRequest): Promise<void> {
    if (this.#finished) return;
    const wait = this.#lastRequestAt + MIN_REQUEST_INTERVAL_MS - Date.now();
    this.#lastRequestAt = Date.now() + Math.max(0, wait);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    if (this.#finished) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#onTimeout(), this.#t.requestTimeoutMs);
    this.#timer.unref?.();
    try {
      await this.#o.fetch(req);
    } catch (err) {
      this.#o.log.debug('fetch request not sent', { reason: (err as Error).message });
    }
  }

  #onTimeout(): void {
    this.#timer = undefined;
    if (this.#finished || !this.#online) return;
    if (Date.now() - this.#lastProgress >= this.#t.stallMs) {
      void this.#fail(
        new UpgradeFailure('E_UPGRADE_DOWNLOAD', `no progress for ${Math.round(this.#t.stallMs / 1000)} s (${this.#done} of ${this.#m.chunks.count} chunks)`),
      );
      return;
    }
    this.#o.log.info('upgrade fetch unanswered: asking again', { chunks_done: this.#done, total: this.#m.chunks.count });
    this.#request();
  }

  async #complete(): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    clearTimeout(this.#timer);
    try {
      await this.#fh?.sync();
      await this.#fh?.close();
      this.#fh = undefined;
      this.#resolve();
    } catch (err) {
      this.#reject(new UpgradeFailure('E_UPGRADE_DOWNLOAD', `finishing the download failed: ${(err as Error).message}`));
    }
  }

  async #fail(err: UpgradeFailure): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    clearTimeout(this.#timer);
    this.#window.clear();
    await this.#fh?.close().catch(() => undefined);
    this.#fh = undefined;
    this.#reject(err);
  }
}

/** Removes a download's partial files. */
export async function removeDownload(dir: string, version: string): Promise<void> {
  const p = upgradePaths(dir);
  await removeFiles(dir, [p.part(version), p.index(version)]);
}
