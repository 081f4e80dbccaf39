/**
 * Simulated devices for the server's tests: each speaks the wire protocol as
 * the agent does (enroll, open commands with every check, ack signed and
 * encrypted), many devices sharing one MQTT connection so that a fan-out to
 * hundreds of them stays cheap.
 */
import { randomUUID } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import {
  KeyRing,
  TRUSTED_CLOCK,
  ackTopic,
  checkReplay,
  enrollTopic,
  generateEncryptionKey,
  generateSigningKey,
  isProtocolError,
  openCommand,
  parseTopic,
  reportTopic,
  sealAck,
  sealReport,
  type ReportReason,
  type ReportUpgrade,
  sealEnrollment,
  toJwkSet,
  toPublicJwk,
  type CommandClaims,
  type JwkSet,
  type PrivateJwk,
  type PublicJwk,
} from '../../protocol/index.js';

export { startEmbeddedBroker, type EmbeddedBroker } from '../../demo/embedded-broker.js';

export type SimBehaviour = 'apply' | 'reject' | 'fail' | 'silent';

export interface SimDevice {
  id: string;
  signing: PrivateJwk;
  encryption: PrivateJwk;
  previousEncryption: PrivateJwk | undefined;
  lastSeq: number;
  jtis: Set<string>;
  applied: CommandClaims[];
  behaviour: SimBehaviour;
  /** An upgrade is acked `rolled_back` (its new release failed the health gate); other actions as `behaviour` says. */
  rollBack?: boolean;
  /**
   * When set, every command that opens is answered `rejected` with this code and,
   * as by an agent before issue 10, not recorded as seen (its bytes stay valid).
   */
  refuseUnrecorded: string | undefined;
  provisioned: boolean;
  userId: string | undefined;
  /** Presence: a board that is away gets nothing; what the broker would queue for it is kept in `queued` and handled when it is back. */
  online: boolean;
  queued: Buffer[];
  /** Every command that opened, with when it arrived. */
  received: { at: number; claims: CommandClaims }[];
  session: string;
  conn: number;
  /** Report order (protocol/report.ts): the agent's run (a restart is run + 1, conn 0) and the reports of the connection. */
  run: number;
  n: number;
  /** The clock's skew allowance when checking `exp` (default: the protocol's, 300 s). */
  maxSkewSeconds: number | undefined;
  publicSet(): JwkSet;
}

export async function makeSimDevice(id: string, behaviour: SimBehaviour = 'apply'): Promise<SimDevice> {
  const [signing, encryption] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
  return {
    id,
    signing,
    encryption,
    previousEncryption: undefined,
    lastSeq: 0,
    jtis: new Set(),
    applied: [],
    behaviour,
    refuseUnrecorded: undefined,
    provisioned: false,
    userId: undefined,
    online: true,
    queued: [],
    received: [],
    session: randomUUID(),
    conn: 0,
    run: 1,
    n: 0,
    maxSkewSeconds: undefined,
    publicSet(this: SimDevice) {
      return toJwkSet([this.signing, this.encryption]);
    },
  };
}

/** Many simulated devices behind one MQTT connection. */
export class SimFleet {
  readonly devices = new Map<string, SimDevice>();
  readonly #client: MqttClient;
  readonly #prefix: string;
  readonly #serverId: string;
  readonly #serverTrust: { signing: PublicJwk; encryption: PublicJwk };
  /** Every ack this fleet sent: device id -> claims. */
  readonly acks: { deviceId: string; ref: string; status: string; code: string }[] = [];
  readonly dropped: { deviceId: string; code: string }[] = [];

  private constructor(client: MqttClient, prefix: string, serverId: string, trust: JwkSet) {
    this.#client = client;
    this.#prefix = prefix;
    this.#serverId = serverId;
    const signing = trust.keys.find((k) => k.use === 'sig');
    const encryption = trust.keys.find((k) => k.use === 'enc');
    if (!signing || !encryption) throw new Error('trust set needs a signing and an encryption key');
    this.#serverTrust = { signing: toPublicJwk(signing), encryption: toPublicJwk(encryption) };
  }

  /** `wildcard: false`: subscribe per device (`watch`), as a broker ACL that confines each device to its own topics requires. */
  static async connect(
    url: string,
    options: { prefix?: string; serverId?: string; trust: JwkSet; tls?: { ca: Buffer; cert?: Buffer; key?: Buffer }; wildcard?: boolean },
  ): Promise<SimFleet> {
    const client = await mqtt.connectAsync(url, {
      clientId: `sim-fleet-${Math.random().toString(16).slice(2)}`,
      clean: true,
      reconnectPeriod: 0,
      ...(options.tls ?? {}),
    });
    const fleet = new SimFleet(client, options.prefix ?? 'provision', options.serverId ?? 'provision-server', options.trust);
    client.on('message', (topic, payload) => void fleet.#onCommand(topic, payload));
    if (options.wildcard !== false) await client.subscribeAsync(`${fleet.#prefix}/+/command`, { qos: 1 });
    return fleet;
  }

  /** Subscribes to one device's command topic; refuses when the broker does. */
  async watch(deviceId: string): Promise<void> {
    const granted = await this.#client.subscribeAsync(`${this.#prefix}/${deviceId}/command`, { qos: 1 });
    if (granted.some((g) => g.qos === 128)) throw new Error(`the broker refused the subscription to ${deviceId}'s commands`);
  }

  add(device: SimDevice): SimDevice {
    this.devices.set(device.id, device);
    return device;
  }

  /** Publishes the device's sealed enrollment (self-signed, encrypted to the server). */
  async enroll(device: SimDevice, token: string, overrides: { signer?: PrivateJwk; topicId?: string } = {}): Promise<void> {
    const { token: sealed } = await sealEnrollment(
      { deviceId: device.id, serverId: this.#serverId, token, signing: toPublicJwk(device.signing), encryption: toPublicJwk(device.encryption) },
      { signer: overrides.signer ?? device.signing, recipient: this.#serverTrust.encryption },
    );
    await this.#client.publishAsync(enrollTopic(this.#prefix, overrides.topicId ?? device.id), sealed, { qos: 1 });
  }

  /** A signed, encrypted report from the device, as the agent sends one (protocol/report.ts). */
  async report(device: SimDevice, reason: ReportReason, options: { intervalSeconds?: number; upgrade?: ReportUpgrade | null } = {}): Promise<void> {
    await this.#client.publishAsync(reportTopic(this.#prefix, device.id), await this.sealReport(device, reason, options), { qos: 1 });
  }

  /** The sealed report (as `report` publishes it); `legacy`: without a position, as an agent before report ordering. */
  async sealReport(
    device: SimDevice,
    reason: ReportReason,
    options: { intervalSeconds?: number; legacy?: boolean; settingsDigest?: string; upgrade?: ReportUpgrade | null } = {},
  ): Promise<string> {
    const n = reason === 'offline' ? 0 : (device.n += 1);
    const { token } = await sealReport(
      {
        deviceId: device.id,
        serverId: this.#serverId,
        reason,
        session: device.session,
        conn: Math.max(device.conn, 1),
        ...(options.legacy ? {} : { order: { run: device.run, n } }),
        intervalSeconds: options.intervalSeconds ?? 300,
        agentVersion: 'sim-1.0.0',
        nodeVersion: process.version,
        lastSeq: device.lastSeq,
        kids: { sig: device.signing.kid, enc: device.encryption.kid },
        settingsDigest: options.settingsDigest ?? `sha256:${'0'.repeat(64)}`,
        uptimeSeconds: 1,
        selftest: null,
        ...(options.upgrade !== undefined ? { upgrade: options.upgrade } : {}),
      },
      { signer: device.signing, recipient: this.#serverTrust.encryption },
    );
    return token;
  }

  /** The board (re)connects: a new connection number, a connect report, then what the broker queued for it while it was away. */
  async connectDevice(device: SimDevice, options: { intervalSeconds?: number } = {}): Promise<void> {
    device.conn += 1;
    device.n = 0;
    device.online = true;
    const queued = device.queued.splice(0);
    for (const payload of queued) await this.#handle(device, payload);
    await this.report(device, 'connect', options);
  }

  /** The board goes away: with `clean`, its offline report for the connection (a clean stop, or the broker publishing its will). */
  async disconnectDevice(device: SimDevice, options: { clean?: boolean } = {}): Promise<void> {
    if (options.clean !== false) await this.report(device, 'offline');
    device.online = false;
  }

  /** Publishes raw bytes on a device topic (for tampering tests). */
  async publishRaw(topic: string, payload: string): Promise<void> {
    await this.#client.publishAsync(topic, payload, { qos: 1 });
  }

  async close(): Promise<void> {
    await this.#client.endAsync();
  }

  async #onCommand(topic: string, payload: Buffer): Promise<void> {
    const parsed = parseTopic(this.#prefix, topic);
    const device = parsed ? this.devices.get(parsed.deviceId) : undefined;
    if (!parsed || parsed.kind !== 'command' || !device) return;
    if (!device.online) {
      device.queued.push(payload);
      return;
    }
    await this.#handle(device, payload);
  }

  async #handle(device: SimDevice, payload: Buffer): Promise<void> {
    const decryption = await KeyRing.create(device.previousEncryption ? [device.encryption, device.previousEncryption] : [device.encryption]);
    const verification = await KeyRing.create([this.#serverTrust.signing]);
    let claims: CommandClaims;
    try {
      ({ claims } = await openCommand(payload, {
        deviceId: device.id,
        topicDeviceId: device.id,
        serverId: this.#serverId,
        decryption,
        verification,
        clock: device.maxSkewSeconds === undefined ? TRUSTED_CLOCK : { ...TRUSTED_CLOCK, maxSkewSeconds: device.maxSkewSeconds },
        replay: { check: (seq, jti) => checkReplay({ lastSeq: device.lastSeq, recentJtis: device.jtis }, seq, jti) },
      }));
    } catch (err) {
      const code = isProtocolError(err) ? err.code : 'E_INTERNAL';
      if (isProtocolError(err) && err.refused?.jti) {
        // As the agent: a refusal of a command addressed to it is decided (its seq and jti are used up).
        if (code !== 'E_REPLAY' && err.refused.seq !== undefined && err.refused.seq > device.lastSeq) {
          device.lastSeq = err.refused.seq;
          device.jtis.add(err.refused.jti);
        }
        await this.#ack(device, err.refused.jti, err.refused.seq ?? 0, 'rejected', code);
      } else {
        this.dropped.push({ deviceId: device.id, code });
      }
      return;
    }
    device.received.push({ at: Date.now(), claims });
    if (device.behaviour === 'silent') return;
    if (device.refuseUnrecorded !== undefined) return this.#ack(device, claims.jti, claims.seq, 'rejected', device.refuseUnrecorded);
    device.lastSeq = claims.seq;
    device.jtis.add(claims.jti);
    if (device.behaviour === 'reject') return this.#ack(device, claims.jti, claims.seq, 'rejected', 'E_PARAMS');
    if (device.behaviour === 'fail') return this.#ack(device, claims.jti, claims.seq, 'failed', 'E_HOOK');
    if (device.rollBack === true && claims.action === 'upgrade')
      return this.#ack(device, claims.jti, claims.seq, 'rolled_back', 'E_UPGRADE_SELFTEST', { version: 'sim-1.0.0', previous: upgradeVersion(claims) });
    device.applied.push(claims);
    const signer = device.signing;
    let result: Record<string, unknown> | undefined;
    if (claims.action === 'request') {
      device.provisioned = true;
      device.userId = claims.user_id;
    } else if (claims.action === 'rotate') {
      const [signing, encryption] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
      device.previousEncryption = device.encryption;
      device.signing = signing;
      device.encryption = encryption;
      result = { keys: toJwkSet([signing, encryption]) };
    } else if (claims.action === 'delete') {
      device.provisioned = false;
    } else if (claims.action === 'upgrade') {
      result = { version: upgradeVersion(claims), previous: 'sim-1.0.0' };
    }
    // The rotate ack is signed with the old signing key.
    await this.#ack(device, claims.jti, claims.seq, 'applied', 'OK', result, signer);
  }

  async #ack(
    device: SimDevice,
    ref: string,
    seq: number,
    status: 'applied' | 'rejected' | 'failed' | 'rolled_back',
    code: string,
    result?: Record<string, unknown>,
    signer?: PrivateJwk,
  ): Promise<void> {
    const { token } = await sealAck(
      { deviceId: device.id, serverId: this.#serverId, ref, seq, status, code, ...(result ? { result } : {}) },
      { signer: signer ?? device.signing, recipient: this.#serverTrust.encryption },
    );
    this.acks.push({ deviceId: device.id, ref, status, code });
    await this.#client.publishAsync(ackTopic(this.#prefix, device.id), token, { qos: 1 });
  }
}

/** The version an upgrade command's manifest names (its payload, unverified: the simulated board trusts the test). */
function upgradeVersion(claims: CommandClaims): string {
  const manifest = (claims.params as { manifest?: unknown }).manifest;
  if (typeof manifest !== 'string') return 'unknown';
  const payload = JSON.parse(Buffer.from(manifest.split('.')[1] ?? '', 'base64url').toString('utf8')) as { version?: unknown };
  return typeof payload.version === 'string' ? payload.version : 'unknown';
}

/** Polls until `check` holds or `timeoutMs` passes. */
export async function eventually<T>(check: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 10_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
