/**
 * Presence and reported state (docs/PROTOCOL.md, Reports): sealed reports to
 * the device's report topic, signed with the device signing key and
 * encrypted to the server's encryption key like acks.
 *
 * - `connect` after every subscription to the command topic;
 * - `interval` every `report_interval_s` while connected (one unref'd timer);
 * - `offline` as the MQTT last will of each connection (sealed before each
 *   attempt with that connection's number, see MqttSession's `will`), and
 *   published explicitly at a graceful stop (a clean DISCONNECT discards it).
 *
 * The first connection's will is sealed ahead by the previous run (sealing is
 * node-jose's slowest first use, on the path to the first CONNECT): once
 * connected, the agent picks the next run's session id and seals that run's
 * conn-1 will into `next-will.json` in the state directory (0600, replaced
 * atomically). A start takes it (and removes it) when it was sealed for its
 * run (below) with the current signing key by the same agent and Node
 * versions; else it seals one.
 *
 * Order (protocol/report.ts): each report carries its position (`run`,
 * `conn`, `n`). `run` is state.json's `report_run` + 1, taken at each start
 * and saved (durably) before the first will or report carries it, so no two
 * starts share one; the save starts in prepare(), off the path to the first
 * CONNECT as far as it can. `n` counts the reports of a connection (connect
 * 1); an `offline` report (a will, or the stop's) has `n` 0 and ranks after
 * all of its connection's. The will sealed ahead for the next start carries
 * that start's run (this run's + 1), and is used only by a start whose run
 * it is.
 *
 * A report never holds up a command and never throws out of here: a failure
 * is logged and the next interval tries again.
 */
import { createHash, randomUUID } from 'node:crypto';
import { unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { errnoCode, removeFileSecurely, writeFileAtomic } from '../../lib/durable-file.js';
import { reportTopic, sealReport, type ReportReason, type ReportUpgrade } from '../../protocol/index.js';
import { agentVersion } from '../version.js';
import type { AgentRuntime } from '../runtime.js';
import { readPrivateFile } from '../store/private-file.js';
import { readSelftestRecord } from '../store/selftest-record.js';
import type { SessionWill } from './mqtt-session.js';

/** JSON with object keys sorted at every level and no whitespace: the same settings give the same text. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v)).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const o = value as Record<string, unknown>;
    const keys = Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/** `sha256:` and the hex SHA-256 of the canonical JSON of the settings as applied (state.json's `settings`). */
export function settingsDigest(settings: unknown): string {
  return `sha256:${createHash('sha256').update(canonicalJson(settings)).digest('hex')}`;
}

/** How long after the first subscription the next run's will is sealed (off the start's path). */
const NEXT_WILL_DELAY_MS = 1000;

/** How long after an applied command its state report follows. */
export const CHANGED_REPORT_DELAY_MS = 2000;

/** The next run's first will, sealed ahead (see above). */
export const NEXT_WILL_FILE = 'next-will.json';
/** A will is a few KiB (the token is refused from 16 KiB on): a bigger file is not read. */
const MAX_NEXT_WILL_BYTES = 32 * 1024;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** What reports carry of an upgrade, and who hears of a report the broker confirmed. */
export interface ReporterHooks {
  /** The upgrade under way (null: none). */
  upgrade?: () => ReportUpgrade | null;
  /** A `connect` or `interval` report was PUBACKed. */
  published?: () => void;
}

interface NextWill {
  session: string;
  /** The run number of the start it was sealed for. */
  run: number;
  kid: string;
  agent_version: string;
  node_version: string;
  token: string;
}

export class Reporter {
  /** This process's session id (the one sealed ahead, if prepare() took it), constant across reconnects. */
  get session(): string {
    return this.#session;
  }
  #session: string = randomUUID();
  readonly #rt: AgentRuntime;
  readonly #topic: string;
  readonly #version = agentVersion();
  readonly #hooks: ReporterHooks;
  /** Connections made so far (the current one's number while connected). */
  #conn = 0;
  /** Reports numbered so far on the current connection. */
  #n = 0;
  /** This start's run number, once being saved (see #runNumber). */
  #run: Promise<number> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #changedTimer: NodeJS.Timeout | undefined;
  #nextWillStored = false;
  #stopped = false;
  /** The first connection's will, sealed ahead (see prepare). */
  #early: { conn: number; kid: string; token: Promise<string> } | undefined;

  constructor(rt: AgentRuntime, hooks: ReporterHooks = {}) {
    this.#rt = rt;
    this.#hooks = hooks;
    this.#topic = reportTopic(rt.config.topic_prefix, rt.config.device_id);
  }

  get conn(): number {
    return this.#conn;
  }

  /**
   * Starts sealing the first connection's will now, while start-up waits on disk and GPIO, so the
   * first CONNECT does not wait for it.
   */
  async prepare(): Promise<void> {
    const kid = this.#rt.keystore.signingKey?.kid;
    if (kid === undefined) return;
    const run = this.#rt.store.state.report_run + 1;
    this.#runNumber().catch(() => undefined); // will() reports a failure
    const ahead = await this.#takeNextWill(kid, run);
    if (ahead) {
      this.#session = ahead.session;
      this.#early = { conn: 1, kid, token: Promise.resolve(ahead.token) };
      return;
    }
    // Sealed with the run being saved, in parallel with that save (will() waits for it before the CONNECT).
    const token = this.#seal('offline', 1, 0, { session: this.#session, run });
    token.catch(() => undefined); // will() reports a failure
    this.#early = { conn: 1, kid, token };
  }

  /** The will of the connection about to be attempted (number conn + 1); undefined before the board has keys. */
  async will(): Promise<SessionWill | undefined> {
    const kid = this.#rt.keystore.signingKey?.kid;
    if (kid === undefined) return undefined;
    const conn = this.#conn + 1;
    const early = this.#early;
    this.#early = undefined;
    const token = early && early.conn === conn && early.kid === kid ? early.token : this.#seal('offline', conn, 0);
    // Handled here: when the run cannot be saved (a full disk) both reject, and only the first is awaited.
    token.catch(() => undefined);
    // Never a CONNECT with a will whose run is not saved yet: a crash could let the next start take it again.
    await this.#runNumber();
    return { topic: this.#topic, payload: await token };
  }

  /** The session is connected (CONNACK): this is connection number conn + 1. */
  onConnected(): void {
    this.#conn += 1;
    this.#n = 0;
  }

  /** Subscribed: the `connect` report, then one every interval while connected (and, once, the next run's first will). */
  onSubscribed(): void {
    if (this.#stopped) return;
    this.#send('connect');
    if (!this.#nextWillStored) {
      this.#nextWillStored = true;
      setTimeout(() => void this.#storeNextWill(), NEXT_WILL_DELAY_MS).unref();
    }
    clearInterval(this.#timer);
    this.#timer = setInterval(() => this.#send('interval'), this.#rt.config.report_interval_s * 1000).unref();
  }

  /**
   * The board's state changed (a command applied: provisioned, new keys, new settings): a report
   * a moment later, once the command's ack is on its way (after a rotate, the server must have
   * adopted the new signing key from that ack before it can verify a report signed with it).
   */
  changed(delayMs = CHANGED_REPORT_DELAY_MS): void {
    if (this.#stopped) return;
    clearTimeout(this.#changedTimer);
    this.#changedTimer = setTimeout(() => {
      this.#send('interval');
      void this.#storeNextWill(); // new keys (rotate), or none (delete)
    }, delayMs).unref();
  }

  onOffline(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Graceful stop: no more reports; an explicit `offline` one if connected, waiting at most `timeoutMs`. */
  async stop(timeoutMs: number): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#changedTimer);
    this.onOffline();
    if (!this.#rt.session.ready || !this.#rt.keystore.signingKey) return;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), timeoutMs).unref()));
    try {
      const r = await Promise.race([this.#publish('offline'), timeout]);
      if (r === 'timeout') this.#rt.log.warn('offline report not confirmed before stopping', { timeout_ms: timeoutMs });
    } finally {
      clearTimeout(timer);
    }
  }

  #send(reason: ReportReason): void {
    if (!this.#rt.session.ready) return; // between connections (a broker switch): the next connect reports
    if (!this.#rt.keystore.signingKey) {
      this.#rt.log.debug('report skipped: no device keys yet', { reason });
      return;
    }
    void this.#publish(reason);
  }

  /** Seals and publishes one report; logs (never throws) on failure. */
  async #publish(reason: ReportReason): Promise<'done'> {
    const conn = this.#conn;
    const n = reason === 'offline' ? 0 : (this.#n += 1);
    try {
      const token = await this.#seal(reason, conn, n);
      await this.#rt.session.publish(this.#topic, token);
      this.#rt.log.debug('report published', { reason, conn });
      if (reason !== 'offline') this.#hooks.published?.();
    } catch (err) {
      this.#rt.log.warn('report not sent; the next interval tries again', { reason, conn, why: err instanceof Error ? err.message : String(err) });
    }
    return 'done';
  }

  /**
   * The next run's will sealed ahead, if usable: taken once (the file is removed), whatever it held.
   * Read like state.json (private-file.ts): a FIFO, a symlink, another user's file, group/other bits
   * or a size no will has are refused unread, with a warning, and the name is unlinked (never followed).
   */
  async #takeNextWill(kid: string, run: number): Promise<NextWill | undefined> {
    const path = join(this.#rt.config.state_dir, NEXT_WILL_FILE);
    let text: string | undefined;
    try {
      text = await readPrivateFile(path, { maxBytes: MAX_NEXT_WILL_BYTES });
    } catch (err) {
      this.#rt.log.warn('next-will.json ignored: it is sealed again (only a start-up optimisation)', {
        file: path,
        why: err instanceof Error ? err.message : String(err),
      });
    }
    try {
      await unlink(path);
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT') this.#rt.log.warn('next-will.json could not be removed', { file: path, why: (err as Error).message });
      return undefined; // absent, or not removable: never reuse it
    }
    if (text === undefined) return undefined;
    let v: Partial<NextWill>;
    try {
      v = JSON.parse(text) as Partial<NextWill>;
    } catch {
      return undefined;
    }
    const ok =
      typeof v.session === 'string' &&
      UUID.test(v.session) &&
      v.run === run &&
      v.kid === kid &&
      v.agent_version === this.#version &&
      v.node_version === process.version &&
      typeof v.token === 'string' &&
      v.token.length < 16_384;
    return ok ? (v as NextWill) : undefined;
  }

  async #storeNextWill(): Promise<void> {
    const rt = this.#rt;
    const path = join(rt.config.state_dir, NEXT_WILL_FILE);
    try {
      const kid = rt.keystore.signingKey?.kid;
      if (kid === undefined || this.#stopped) {
        await removeFileSecurely(path).catch(() => false);
        return;
      }
      const session = randomUUID();
      // The next start's run: this one's + 1 (saved before anything carried this one).
      const run = (await this.#runNumber()) + 1;
      const token = await this.#seal('offline', 1, 0, { session, run });
      const next: NextWill = { session, run, kid, agent_version: this.#version, node_version: process.version, token };
      await writeFileAtomic(path, `${JSON.stringify(next)}\n`, { mode: 0o600 });
    } catch (err) {
      rt.log.debug('next start will not sealed ahead', { why: err instanceof Error ? err.message : String(err) });
    }
  }

  /**
   * This start's run number: state.json's `report_run` + 1, saved before it is used. A failed save
   * (a full disk) is tried again at the next report or will; until one succeeds, none is sent.
   */
  #runNumber(): Promise<number> {
    if (this.#run) return this.#run;
    const run = this.#rt.store.state.report_run + 1;
    const saved = this.#rt.store
      .update((d) => {
        d.report_run = Math.max(d.report_run, run);
      })
      .then(() => run);
    this.#run = saved;
    saved.catch(() => {
      if (this.#run === saved) this.#run = undefined;
    });
    return saved;
  }

  async #seal(reason: ReportReason, conn: number, n: number, next?: { session: string; run: number }): Promise<string> {
    const rt = this.#rt;
    const signer = rt.keystore.signingKey;
    const enc = rt.keystore.encryptionKey;
    if (!signer || !enc) throw new Error('no device keys to sign the report with');
    const st = rt.store.state;
    const session = next?.session ?? this.#session;
    const run = next?.run ?? (await this.#runNumber());
    const { token } = await sealReport(
      {
        deviceId: rt.deviceId,
        serverId: rt.config.server_id,
        reason,
        session,
        conn,
        order: { run, n },
        intervalSeconds: rt.config.report_interval_s,
        agentVersion: this.#version,
        nodeVersion: process.version,
        lastSeq: st.last_seq,
        kids: { sig: signer.kid, enc: enc.kid },
        settingsDigest: settingsDigest(st.settings),
        uptimeSeconds: process.uptime(),
        selftest: await readSelftestRecord(rt.store.dir),
        ...(this.#hooks.upgrade ? { upgrade: this.#hooks.upgrade() } : {}),
      },
      { signer, recipient: rt.trust.encryption },
    );
    return token;
  }
}
