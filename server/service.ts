/**
 * `serve`: the long-running server. Three MQTT sessions (persistent, QoS 1; a
 * message is PUBACKed only after it has been handled): one takes the fleet's
 * acks and publishes commands, one (client id + `-enroll`) takes enrollments,
 * one (client id + `-report`) takes reports. The broker queues messages per
 * session (mosquitto: max_queued_messages, then drops), and anyone with the
 * public trust.jwks and one device certificate can flood enrollments, any
 * board can flood its own valid reports: in sessions of their own, such
 * floods fill only the enrollment or report queue and never crowd out acks.
 * Reports are rate-limited per device before they are opened
 * (server/core/report-intake.ts). Sending, ack waiting and the enrollment, ack
 * and report (presence) handling are the server core's (server/core/); here:
 * the sessions, the rollout engine (while this serve holds its lease), the
 * release transfers and the optional HTTP API on loopback.
 */
import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import type { MqttClient } from 'mqtt';
import { assertJosePatched, CodedError, type ReportClaims } from '../protocol/index.js';
import { RolloutEngine } from './rollouts/engine.js';
import { RolloutChangeLog } from './rollouts/change-log.js';
import type { CommandSender, SendRequest } from './core/command-sender.js';
import { ServerCore } from './core/server-core.js';
import { brokerFrom, openDataDir, readHttpToken, type BrokerSettings, type OpenedData } from './data-dir.js';
import { createHttpApi } from './http/http-api.js';
import { readHttpTls } from './http/tls-files.js';
import { EnrollRefusals } from './core/enroll-refusals.js';
import type { InboundResult } from './core/inbound.js';
import { handleUntilStored } from './core/inbound-retry.js';
import { silentLogger, type Logger } from '../lib/log.js';
import { connectBroker } from './core/mqtt-connection.js';
import { ReportIntake, type ReportDropCounts, type ReportIntakeOptions } from './core/report-intake.js';
import type { CommandRecord } from './storage/records.js';
import type { SessionLimits } from './storage/operator-records.js';
import { ChunkServer, type ChunkResult, type ChunkServerOptions } from './chunk-server.js';
import { subscribeFleet, unsubscribeFleet, type SharedMode } from './core/subscriptions.js';

export interface ServeOptions {
  dataDir: string;
  /** The registry (a postgres:// URL or a SQLite path); default: env PROVISION_SERVER_REGISTRY, server.json's, DATA/registry.sqlite. */
  registry?: string;
  /** Overrides what `init` recorded. */
  broker?: { broker?: string; ca?: string; cert?: string; key?: string };
  /** `host:port` or {host, port}; undefined: no HTTP API. Port 0 picks a free one. */
  http?: { host: string; port: number };
  /** Bearer token file; default DATA/http.token. */
  httpTokenFile?: string;
  /** Serve the HTTP API over HTTPS with this certificate and key file (the key 0600). */
  httpTls?: { cert: string; key: string };
  /** Console session limits (default: 30 min idle, 12 h in all). */
  sessions?: SessionLimits;
  /** Where the console's built files are (default dist/console). */
  consoleDir?: string;
  /** The registry's clock and the login rate limit's (tests: sessions expire without sleeping); default Date.now. */
  now?: () => number;
  shared?: SharedMode;
  clientId?: string;
  log?: Logger;
  /** false: do not drive rollouts here (another serve does). Default: drive them while holding the lease. */
  rollouts?: boolean;
  /** Called after each inbound message was handled (tests, demo). */
  onInbound?: (result: InboundResult) => void;
  /** Report rate limit, hold and summary interval (defaults: server/core/report-intake.ts). */
  reports?: ReportIntakeOptions;
  /** Fetch (release transfer) rate limit per device and refusal summary interval (defaults: server/chunk-server.ts). */
  fetch?: Pick<ChunkServerOptions, 'rate' | 'summaryMs'>;
  /** Called after each fetch request was handled (tests). */
  onFetch?: (result: ChunkResult) => void;
}

export interface RunningServer {
  data: OpenedData;
  broker: BrokerSettings;
  /** The session that takes acks and publishes commands. */
  client: MqttClient;
  /** The session that takes enrollments. */
  enrollClient: MqttClient;
  /** The session that takes reports. */
  reportClient: MqttClient;
  /** The session that takes fetch requests and publishes chunks (clean, QoS 0). */
  fetchClient: MqttClient;
  chunks: ChunkServer;
  /** Reports dropped since the start: not newer than the recorded one, over the rate, without a registered key. */
  reportDrops: Readonly<ReportDropCounts>;
  /** The server core (sending, ack waiters, inbound handling). */
  core: ServerCore;
  sender: CommandSender;
  /** The rollout engine (undefined with rollouts: false). */
  rollouts: RolloutEngine | undefined;
  shared: boolean;
  /** Where the HTTP API listens, when enabled. */
  http: { host: string; port: number } | undefined;
  send(req: SendRequest): Promise<CommandRecord>;
  waitForAck(jti: string, timeoutMs: number): Promise<CommandRecord | undefined>;
  close(): Promise<void>;
}

export async function startProvisionServer(options: ServeOptions): Promise<RunningServer> {
  await assertJosePatched(); // before anything opens: an unpatched node-jose seals and opens nothing
  const log = options.log ?? silentLogger;
  const data = await openDataDir(options.dataDir, {
    ...(options.registry !== undefined ? { registry: options.registry } : {}),
    ...(options.now ? { now: options.now } : {}),
  });
  const { storage, keys, config } = data;
  const broker = brokerFrom(config.broker, options.broker ?? {});
  let client: MqttClient | undefined;
  let enrollClient: MqttClient | undefined;
  let reportClient: MqttClient | undefined;
  let fetchClient: MqttClient | undefined;
  let chunks: ChunkServer | undefined;
  let httpServer: Server | undefined;
  let engine: RolloutEngine | undefined;
  let core: ServerCore | undefined;
  const enrollRefusals = new EnrollRefusals(storage, log);
  const reports = new ReportIntake(log, options.reports);
  const stopping = { now: false };
  try {
    // The HTTP token is checked before the broker is contacted: a bad --http-token-file changes nothing.
    const httpToken = options.http ? await readHttpToken(options.httpTokenFile ?? data.paths.httpToken) : undefined;
    const httpTls = options.http && options.httpTls ? await readHttpTls(options.httpTls.cert, options.httpTls.key) : undefined;
    const clientId = options.clientId ?? defaultClientId(data.paths.dir);
    // Every session hands its messages to the core, which acknowledges each only after handling it
    // (core/ack-after-handling.ts). What a persistent session queued arrives right after its CONNACK:
    // it waits in the core until the handling is started below. A message that failed for a lost
    // registry connection is handled again until it can be (core/inbound-retry.ts), and not
    // acknowledged when serve stops first.
    const serverCore = new ServerCore(
      { storage, keys, topicPrefix: config.topicPrefix, log, enrollRefusals, reports },
      { retry: (attempt) => handleUntilStored(attempt, () => stopping.now) },
    );
    core = serverCore;
    const session = (suffix: string): Promise<MqttClient> =>
      connectBroker(broker, { clientId: `${clientId}${suffix}`, clean: false, handleMessage: serverCore.handleMessage });
    client = await session('');
    enrollClient = await session('-enroll');
    reportClient = await session('-report');
    // Release transfers: their own clean session (QoS 0 both ways: nothing is queued for a board that is away),
    // so megabytes of chunks never queue in front of acks, enrollments or reports.
    const fetchSet: { server?: ChunkServer } = {};
    fetchClient = await connectBroker(broker, {
      clientId: `${clientId}-fetch`,
      clean: true,
      handleMessage: (packet, callback) => {
        callback();
        const server = fetchSet.server;
        if (!server) return;
        const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : Buffer.from(packet.payload);
        void server.handle(packet.topic, payload).then((r) => options.onFetch?.(r));
      },
    });
    const chunkClient = fetchClient;
    chunks = new ChunkServer({
      storage,
      dataDir: data.paths.dir,
      topicPrefix: config.topicPrefix,
      log,
      publish: async (topic, payload) => {
        await chunkClient.publishAsync(topic, payload, { qos: 0, retain: false });
      },
      ...(options.fetch ?? {}),
    });
    fetchSet.server = chunks;
    const mqttClient = client;
    serverCore.publishOn(mqttClient);
    const sender = serverCore.sender;
    // Rollouts: driven here while this serve holds the engine lease (one serve at a time does).
    engine = options.rollouts === false ? undefined : new RolloutEngine({ storage, sender, log, holder: `serve-${clientId}-${process.pid}` });
    const rollouts = engine;
    serverCore.start({
      onAck: (c: CommandRecord) => {
        if (c.fanoutId !== null) rollouts?.kick();
      },
      // Only a report newer than the device's last one gets here (a replay or a late will does not).
      onReport: (deviceId: string, claims: ReportClaims) => rollouts?.onReport(deviceId, claims),
      ...(options.onInbound ? { onResult: options.onInbound } : {}),
    });
    const { shared } = await subscribeFleet(mqttClient, config.topicPrefix, { mode: options.shared ?? 'auto', log, kinds: ['ack'] });
    // A persistent session of an earlier version may still hold the enrollment or report subscription: acks only here.
    await unsubscribeFleet(mqttClient, config.topicPrefix, 'enroll');
    await unsubscribeFleet(mqttClient, config.topicPrefix, 'report');
    await subscribeFleet(enrollClient, config.topicPrefix, { mode: shared ? 'on' : 'off', log, kinds: ['enroll'] });
    await subscribeFleet(reportClient, config.topicPrefix, { mode: shared ? 'on' : 'off', log, kinds: ['report'] });
    await subscribeFleet(fetchClient, config.topicPrefix, { mode: shared ? 'on' : 'off', log, kinds: ['fetch'], qos: 0 });
    let httpAddress: { host: string; port: number } | undefined;
    if (options.http && httpToken !== undefined) {
      httpServer = createHttpApi({
        storage,
        keys,
        sender,
        token: httpToken,
        log,
        ...(options.sessions ? { sessions: options.sessions } : {}),
        ...(options.now ? { now: options.now } : {}),
        ...(options.consoleDir ? { consoleDir: options.consoleDir } : {}),
        ...(httpTls ? { tls: httpTls } : {}),
        ...(rollouts ? { onRolloutChange: () => rollouts.kick() } : {}),
      });
      const srv = httpServer;
      await new Promise<void>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(options.http?.port, options.http?.host, () => resolve());
      });
      const addr = srv.address() as AddressInfo;
      httpAddress = { host: addr.address, port: addr.port };
      log.info('http.listening', { address: `${addr.address}:${addr.port}`, tls: httpTls !== undefined });
    }
    rollouts?.start();
    // Rollouts created or controlled by any process (CLI, HTTP API, engine) are logged here.
    const changeLog = new RolloutChangeLog(storage, log, rollouts ? { ownHolder: rollouts.holder } : {});
    await changeLog.start();
    log.info('serve.ready', { server_id: keys.serverId, broker: broker.url, prefix: config.topicPrefix, shared });
    let closed = false;
    return {
      data,
      broker,
      client: mqttClient,
      enrollClient,
      reportClient,
      fetchClient,
      chunks,
      reportDrops: reports.counts,
      sender,
      rollouts,
      shared,
      http: httpAddress,
      core: serverCore,
      send: async (req) => (await serverCore.send(req)).command,
      waitForAck: (jti, timeoutMs) => serverCore.waiters.wait(jti, timeoutMs),
      close: async () => {
        if (closed) return;
        closed = true;
        stopping.now = true;
        serverCore.close();
        changeLog.stop();
        await rollouts?.stop();
        if (httpServer) {
          httpServer.closeAllConnections();
          await new Promise<void>((resolve) => httpServer?.close(() => resolve()));
        }
        await Promise.all([
          mqttClient.endAsync().catch(() => undefined),
          enrollClient?.endAsync().catch(() => undefined),
          reportClient?.endAsync().catch(() => undefined),
          fetchClient?.endAsync().catch(() => undefined),
        ]);
        chunks?.close();
        reports.close();
        await enrollRefusals.close();
        await storage.close();
      },
    };
  } catch (err) {
    stopping.now = true;
    core?.close();
    httpServer?.close();
    await engine?.stop();
    await client?.endAsync(true).catch(() => undefined);
    await enrollClient?.endAsync(true).catch(() => undefined);
    await reportClient?.endAsync(true).catch(() => undefined);
    await fetchClient?.endAsync(true).catch(() => undefined);
    chunks?.close();
    reports.close();
    await enrollRefusals.close();
    await storage.close().catch(() => undefined);
    throw err;
  }
}

/** `host:port` (IPv6 as `[::1]:8080`), or a bare port on 127.0.0.1, to {host, port}. */
export function parseHostPort(text: string): { host: string; port: number } {
  const usage = (why: string): Error =>
    new CodedError('E_USAGE', `--http "${text}" ${why}: give a port (127.0.0.1 is assumed) or host:port, e.g. 8080, 127.0.0.1:8080 or [::1]:8080`);
  const bare = /^\d+$/.test(text.trim());
  const m = bare ? undefined : /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text.trim());
  if (!bare && !m) throw usage('is neither a port nor host:port');
  const port = Number(bare ? text.trim() : m?.[3]);
  if (!Number.isSafeInteger(port) || port > 65535) throw usage(`names port ${bare ? text.trim() : m?.[3]}, above 65535`);
  return { host: bare ? '127.0.0.1' : ((m?.[1] ?? m?.[2]) as string), port };
}

/**
 * A stable client id per host and data directory (the broker keeps the
 * persistent session under it across restarts); pass --client-id to run two
 * instances on one host with one data directory.
 */
export function defaultClientId(dataDir: string): string {
  const tag = createHash('sha256').update(dataDir).digest('hex').slice(0, 8);
  return `provision-server-${hostname()
    .replace(/[^A-Za-z0-9._-]/g, '-')
    .slice(0, 32)}-${tag}`;
}
