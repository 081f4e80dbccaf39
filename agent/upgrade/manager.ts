/**
 * An accepted upgrade after its command's PUBACK, within one agent process:
 *
 * - `download` phase: the artifact is fetched (download.ts), resumed after a
 *   reconnect or a restart (state.json's `pending_upgrade`), its whole
 *   SHA-256 checked (E_UPGRADE_ARTIFACT), renamed to `artifact.tar.gz`, and
 *   `staged.json` written last (atomically): phase `staged`, root's
 *   installer takes over (it runs when staged.json appears);
 * - a release on trial (the installer's `trial.json` names this agent's
 *   version): `progress.json` as the trial goes (started, connected,
 *   self-test, a report PUBACKed), then `healthy`;
 * - `result.json` (the installer's decision), at start or when it appears
 *   (polled every second while an upgrade is pending or on trial): its ack
 *   is sealed and published, the command's record updated (a duplicate gets
 *   the same answer), `pending_upgrade` cleared, and the hand-over files
 *   removed once the broker has the ack.
 *
 * The agent decides nothing about commit or rollback: root judges the new
 * release from outside.
 */
import { createReadStream } from 'node:fs';
import { rename } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { fetchTopic, parseChunkFrame, encodeFetch, type AckStatus, type ReleaseManifest, type ReportUpgrade } from '../../protocol/index.js';
import { fsyncDirectory } from '../../lib/durable-file.js';
import type { AgentRuntime } from '../runtime.js';
import { runSelftest } from '../selftest.js';
import type { AgentState, PendingUpgrade } from '../store/state.js';
import { agentVersion } from '../version.js';
import { loadReleaseKeys, UpgradeRefusal, verifyManifest } from './checks.js';
import { ChunkDownload, removeDownload, UpgradeFailure, type DownloadTimings } from './download.js';
import {
  ensureUpgradeDir,
  readResult,
  readSafeFile,
  readTrial,
  removeFiles,
  upgradePaths,
  writeJsonFile,
  type ProgressRecord,
  type ResultRecord,
  type StagedRecord,
  type UpgradePaths,
} from './files.js';
import { writeFileAtomic } from '../../lib/durable-file.js';

export const RESULT_POLL_MS = 1000;

export interface UpgradeManagerOptions {
  /** The reported state changed (a phase): a report soon. */
  onChanged?: () => void;
  /** Download timings (tests). */
  timings?: Partial<DownloadTimings>;
}

export class UpgradeManager {
  readonly #rt: AgentRuntime;
  readonly #paths: UpgradePaths;
  readonly #o: UpgradeManagerOptions;
  #download: ChunkDownload | undefined;
  #downloadFor: string | undefined;
  #poll: NodeJS.Timeout | undefined;
  #checking = false;
  /** The result being acked (its jti): not taken again meanwhile. */
  #acking: string | undefined;
  #trial: ProgressRecord | undefined;
  #healthy = false;
  #stopped = false;

  constructor(rt: AgentRuntime, o: UpgradeManagerOptions = {}) {
    this.#rt = rt;
    this.#paths = upgradePaths(rt.config.upgrade.dir);
    this.#o = o;
  }

  /** At agent start, before connecting: trial detection, a result waiting, a download to resume. */
  async start(): Promise<void> {
    const rt = this.#rt;
    const log = rt.log;
    const version = agentVersion();
    const trial = await readTrial(this.#paths.trial).catch((err: unknown) => {
      log.warn('upgrade trial record ignored', { reason: (err as Error).message });
      return undefined;
    });
    if (trial !== undefined && trial.version === version && (await readSafeFile(this.#paths.result, 16 * 1024).catch(() => undefined)) === undefined) {
      this.#trial = { version, started: true, connected: false, selftest: null, reported: false };
      log.info('upgrade: this release runs on trial', { version, from: trial.from, deadline_s: trial.deadline_s });
      await this.#writeProgress();
      const p = rt.store.state.pending_upgrade;
      if (p !== null && p.version === version && p.phase !== 'trial') {
        await rt.store.update((d) => {
          if (d.pending_upgrade) d.pending_upgrade.phase = 'trial';
        });
      }
    }
    const pending = rt.store.state.pending_upgrade;
    if (pending?.phase === 'download') this.begin(pending);
    this.#ensurePolling();
    void this.#checkResult();
  }

  /** An accepted command's upgrade, after its PUBACK (or resumed at start). */
  begin(pending: PendingUpgrade): void {
    if (this.#stopped || this.#downloadFor === pending.jti) return;
    this.#downloadFor = pending.jti;
    this.#ensurePolling();
    void this.#runDownload(pending).finally(() => {
      if (this.#downloadFor === pending.jti) this.#downloadFor = undefined;
    });
  }

  /** A message on the chunk topic. */
  onData(payload: Buffer): void {
    const d = this.#download;
    if (!d) return;
    try {
      d.onFrame(parseChunkFrame(payload));
    } catch (err) {
      this.#rt.log.debug('chunk frame dropped', { reason: (err as Error).message });
    }
  }

  onSubscribed(): void {
    this.#download?.online();
    if (this.#trial && !this.#trial.connected) {
      this.#trial.connected = true;
      void this.#writeProgress();
      void this.#trialSelftest();
    }
  }

  onOffline(): void {
    this.#download?.offline();
  }

  /** A report was PUBACKed. */
  onReportPublished(): void {
    const t = this.#trial;
    if (!t || t.reported || !t.connected) return;
    t.reported = true;
    void this.#writeProgress().then(() => this.#maybeHealthy());
  }

  /** The report's `upgrade` member. */
  report(): ReportUpgrade | null {
    const p = this.#rt.store.state.pending_upgrade;
    if (!p) return null;
    const d = this.#download;
    if (p.phase === 'download' && d) return { to: p.version, phase: p.phase, done: d.done, total: d.total };
    return { to: p.version, phase: p.phase };
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#poll);
    this.#poll = undefined;
    await this.#download?.close();
  }

  #ensurePolling(): void {
    if (this.#poll || this.#stopped) return;
    if (!this.#rt.store.state.pending_upgrade && !this.#trial) return;
    this.#poll = setInterval(() => void this.#checkResult(), RESULT_POLL_MS);
    this.#poll.unref?.();
  }

  #stopPollingIfIdle(): void {
    if (this.#rt.store.state.pending_upgrade || this.#trial || this.#acking) return;
    clearInterval(this.#poll);
    this.#poll = undefined;
  }

  // --- trial ---

  async #writeProgress(): Promise<void> {
    const t = this.#trial;
    if (!t) return;
    try {
      await ensureUpgradeDir(this.#paths.dir);
      await writeJsonFile(this.#paths.progress, t);
    } catch (err) {
      this.#rt.log.error('upgrade progress not written', { reason: (err as Error).message });
    }
  }

  async #trialSelftest(): Promise<void> {
    const t = this.#trial;
    if (!t) return;
    try {
      const report = await runSelftest({ config: this.#rt.config, configPath: this.#rt.config.path, running: this.#rt });
      t.selftest = report.ok;
      const failed = report.checks.filter((c) => c.required && c.status === 'fail').map((c) => `${c.id}: ${c.reason}`);
      this.#rt.log.info('upgrade trial self-test', { ok: report.ok, ...(failed.length ? { failed: failed.join('; ') } : {}) });
    } catch (err) {
      t.selftest = false;
      this.#rt.log.error('upgrade trial self-test could not run', { reason: (err as Error).message });
    }
    await this.#writeProgress();
    await this.#maybeHealthy();
  }

  async #maybeHealthy(): Promise<void> {
    const t = this.#trial;
    if (!t || this.#healthy || !t.connected || t.selftest !== true || !t.reported) return;
    this.#healthy = true;
    try {
      await writeFileAtomic(this.#paths.healthy, `${t.version}\n`, { mode: 0o600 });
      this.#rt.log.info('upgrade trial: healthy (started, connected, self-test passed, report confirmed); the installer commits', { version: t.version });
    } catch (err) {
      this.#healthy = false;
      this.#rt.log.error('upgrade healthy marker not written', { reason: (err as Error).message });
    }
  }

  // --- download and staging ---

  async #runDownload(pending: PendingUpgrade): Promise<void> {
    const rt = this.#rt;
    const log = rt.log.child({ upgrade: pending.version, jti: pending.jti });
    let manifest: ReleaseManifest;
    try {
      const keys = await loadReleaseKeys(rt.config.release_keys);
      if (!keys) throw new UpgradeRefusal('E_UPGRADE_UNSUPPORTED', `release keys ${rt.config.release_keys} are gone`);
      manifest = await verifyManifest(pending.manifest, keys);
      await ensureUpgradeDir(this.#paths.dir);
      const staged = await this.#stagedRecord();
      if (staged?.jti === pending.jti) {
        // Staged before a crash, the phase not yet saved.
        await this.#setPhase(pending.jti, 'staged');
        return;
      }
    } catch (err) {
      await this.#failed(pending, (err as { code?: string }).code ?? 'E_UPGRADE_DOWNLOAD', (err as Error).message);
      return;
    }
    const download = new ChunkDownload({
      dir: this.#paths.dir,
      version: pending.version,
      manifest,
      log,
      fetch: (req) => rt.session.publishDatagram(fetchTopic(rt.config.topic_prefix, rt.deviceId), encodeFetch(req).toString('utf8')),
      ...(this.#o.timings ? { timings: this.#o.timings } : {}),
    });
    try {
      await download.prepare();
      if (this.#stopped) return void (await download.close());
      this.#download = download;
      log.info('upgrade download started', { chunks_done: download.done, total: download.total, bytes: manifest.artifact.bytes });
      if (rt.session.ready) download.online();
      await download.run();
      this.#download = undefined;
      await this.#stage(pending, manifest);
      log.info('upgrade staged: the installer takes over', { version: pending.version });
    } catch (err) {
      this.#download = undefined;
      await download.close();
      if (this.#stopped) return;
      const code = err instanceof UpgradeFailure ? err.code : 'E_UPGRADE_DOWNLOAD';
      await this.#failed(pending, code, (err as Error).message);
    }
  }

  async #stagedRecord(): Promise<StagedRecord | undefined> {
    const buf = await readSafeFile(this.#paths.staged, 16 * 1024).catch(() => undefined);
    if (!buf) return undefined;
    try {
      return JSON.parse(buf.toString('utf8')) as StagedRecord;
    } catch {
      return undefined;
    }
  }

  /** Whole-artifact check, rename, staged.json last; phase `staged`. */
  async #stage(pending: PendingUpgrade, m: ReleaseManifest): Promise<void> {
    const part = this.#paths.part(pending.version);
    const hash = createHash('sha256');
    let size = 0;
    for await (const chunk of createReadStream(part, { highWaterMark: 64 * 1024 })) {
      const b = chunk as Buffer;
      size += b.length;
      hash.update(b);
    }
    const digest = hash.digest('hex');
    if (size !== m.artifact.bytes || digest !== m.artifact.sha256) {
      throw new UpgradeFailure(
        'E_UPGRADE_ARTIFACT',
        `the downloaded artifact (${size} bytes, SHA-256 ${digest}) is not the signed one (${m.artifact.bytes} bytes, ${m.artifact.sha256})`,
      );
    }
    await rename(part, this.#paths.artifact);
    await fsyncDirectory(this.#paths.dir);
    const staged: StagedRecord = {
      version: pending.version,
      manifest: pending.manifest,
      deadline_s: pending.deadline_s,
      jti: pending.jti,
      seq: pending.seq,
      from: pending.from,
    };
    await writeJsonFile(this.#paths.staged, staged);
    await removeFiles(this.#paths.dir, [this.#paths.index(pending.version)]);
    await this.#setPhase(pending.jti, 'staged');
  }

  async #setPhase(jti: string, phase: PendingUpgrade['phase']): Promise<void> {
    await this.#rt.store.update((d) => {
      if (d.pending_upgrade?.jti === jti) d.pending_upgrade.phase = phase;
    });
    this.#o.onChanged?.();
  }

  /** The upgrade failed before anything was installed: partial files removed, `failed` ack. */
  async #failed(pending: PendingUpgrade, code: string, detail: string): Promise<void> {
    const rt = this.#rt;
    rt.log.error('upgrade failed', { version: pending.version, code, detail });
    await removeDownload(this.#paths.dir, pending.version).catch(() => undefined);
    await removeFiles(this.#paths.dir, [this.#paths.artifact]).catch(() => undefined);
    await this.#decide(pending.jti, 'failed', code, detail);
    const token = await rt.sealAck({ ref: pending.jti, seq: pending.seq, status: 'failed', code, detail, result: { version: agentVersion() } });
    rt.publishAck(token, { ref: pending.jti, status: 'failed', code });
    this.#stopPollingIfIdle();
    this.#o.onChanged?.();
  }

  /** Records the command's final outcome (a duplicate gets it) and clears the pending upgrade. */
  async #decide(jti: string, status: AckStatus, code: string, detail: string): Promise<void> {
    await this.#rt.store.update((d: AgentState) => {
      for (const r of [...d.recent, ...(d.last_command ? [d.last_command] : [])]) {
        if (r.jti === jti) Object.assign(r, { status, code, detail });
      }
      if (d.pending_upgrade?.jti === jti) d.pending_upgrade = null;
    });
  }

  // --- the installer's result ---

  async #checkResult(): Promise<void> {
    if (this.#checking || this.#stopped) return;
    this.#checking = true;
    try {
      let r: ResultRecord | undefined;
      try {
        r = await readResult(this.#paths.result);
      } catch (err) {
        this.#rt.log.warn('upgrade result ignored', { reason: (err as Error).message });
        return;
      }
      if (r !== undefined && this.#acking !== r.jti) await this.#ackResult(r);
    } finally {
      this.#checking = false;
    }
  }

  async #ackResult(r: ResultRecord): Promise<void> {
    const rt = this.#rt;
    this.#acking = r.jti;
    try {
      const version = r.status === 'applied' ? r.version || agentVersion() : agentVersion();
      const result: Record<string, unknown> = { version, ...(r.status === 'applied' && r.from ? { previous: r.from } : {}) };
      const detail = r.detail || `${r.status}: ${r.code}`;
      rt.log.info('upgrade decided by the installer', { status: r.status, code: r.code, version: r.version, from: r.from, detail });
      await this.#decide(r.jti, r.status, r.code, detail);
      this.#trial = undefined;
      this.#o.onChanged?.();
      const token = await rt.sealAck({ ref: r.jti, seq: r.seq, status: r.status, code: r.code, detail, result });
      const confirmed = await rt.publishAckConfirmed(token, { ref: r.jti, status: r.status, code: r.code });
      if (!confirmed) return; // the next start (or poll) acks it again
      const p = this.#paths;
      const staged = await this.#stagedRecord();
      // result.json last: until it is gone, a restart acks again (the server takes a second ack as a duplicate).
      await removeFiles(p.dir, [
        p.healthy,
        p.progress,
        p.trial,
        p.part(r.version || 'none'),
        p.index(r.version || 'none'),
        ...(staged === undefined || staged.jti === r.jti ? [p.staged, p.artifact] : []),
        p.result,
      ]);
    } catch (err) {
      rt.log.error('upgrade result not acked', { reason: (err as Error).message });
    } finally {
      this.#acking = undefined;
      this.#stopPollingIfIdle();
    }
  }
}
