/**
 * The production mosquitto configuration, run for real on a loopback port:
 * per-device ACL, identity from the client certificate, client ids that
 * cannot be borrowed, and the server identity doing its job.
 *
 * "Receives nothing" is shown without timing: every negative case is followed
 * by a message the same client is allowed to receive, sent after the
 * forbidden one through the same single-threaded broker; the allowed message
 * arriving first-and-only proves the forbidden one was not delivered.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { probeTlsIdentity } from '../../agent/net/broker-probe.js';
import { startBroker, type RunningBroker } from './mosquitto-fixture.js';
import { clientCredentials, makeTestPki, type ClientCredentials } from './pki-fixture.js';
import { requireTools } from './tools.js';

const A = 'deviceA';
const B = 'deviceB';
const SERVER = 'provision-server';
const topic = (device: string, kind: 'command' | 'ack' | 'enroll' | 'report'): string => `provision/${device}/${kind}`;

interface Received {
  topic: string;
  payload: string;
}

/** A connected client that records every message it receives. */
interface Probe {
  client: MqttClient;
  received: Received[];
  /** Resolves with the first message whose payload is `payload` (all messages stay recorded). */
  waitFor(payload: string): Promise<Received>;
}

function errorCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'number' ? code : undefined;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a refusal');
}

describe('deploy/broker: production mosquitto config and ACL', function () {
  let dir: string;
  let broker: RunningBroker;
  const creds = new Map<string, ClientCredentials>();
  const open: MqttClient[] = [];
  let rogueB: { cert: Buffer; key: Buffer };

  before(async function () {
    const { mosquitto = '' } = requireTools(this, 'REQUIRE_MOSQUITTO', ['mosquitto', 'openssl']);
    dir = await mkdtemp(join(tmpdir(), 'broker-acl-'));
    const pkiDir = join(dir, 'pki');
    await makeTestPki(pkiDir, [A, B]);
    for (const name of [A, B, SERVER]) creds.set(name, await clientCredentials(pkiDir, name));
    // Another CA that issues a certificate for "deviceB": the broker must not accept it.
    await makeTestPki(join(dir, 'rogue-pki'), [B]);
    const r = await clientCredentials(join(dir, 'rogue-pki'), B);
    rogueB = { cert: r.cert, key: r.key };
    broker = await startBroker(mosquitto, pkiDir, dir);
  });

  afterEach(async () => {
    await Promise.all(open.splice(0).map((c) => c.endAsync(true).catch(() => undefined)));
  });

  after(async () => {
    if (broker) await broker.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  function options(identity: string, extra: Partial<IClientOptions> = {}): IClientOptions {
    const c = creds.get(identity);
    if (!c) throw new Error(`no credentials for ${identity}`);
    return { ca: c.ca, cert: c.cert, key: c.key, clientId: identity, protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 5000, ...extra };
  }

  /** Devices connect to the device listener, the server identity to the backend listener. */
  async function connect(identity: string, extra: Partial<IClientOptions> = {}): Promise<Probe> {
    const url = identity === SERVER ? broker.backendUrl : broker.deviceUrl;
    const client = await mqtt.connectAsync(url, options(identity, identity === SERVER ? { clientId: 'provision-server-test', ...extra } : extra));
    open.push(client);
    const received: Received[] = [];
    const waiters: Array<{ payload: string; resolve: (m: Received) => void }> = [];
    client.on('message', (t, payload) => {
      const m = { topic: t, payload: payload.toString() };
      received.push(m);
      for (const w of waiters.filter((x) => x.payload === m.payload)) w.resolve(m);
    });
    return {
      client,
      received,
      waitFor: (payload) => {
        const hit = received.find((m) => m.payload === payload);
        if (hit) return Promise.resolve(hit);
        return new Promise((resolve) => waiters.push({ payload, resolve }));
      },
    };
  }

  it("refuses clients without a certificate, with one from another CA, plain MQTT, and each listener the other's certificates", async () => {
    const refused = /certificate|handshake|alert|ECONNRESET|socket|closed|unknown ca/i;
    const c = creds.get(A);
    for (const url of [broker.deviceUrl, broker.backendUrl]) {
      expect(String(await rejection(mqtt.connectAsync(url, { ...options(B), ...rogueB }))), `rogue CA at ${url}`).to.match(refused);
      const noCert = await rejection(mqtt.connectAsync(url, { ca: c?.ca, clientId: A, protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 5000 }));
      expect(String(noCert), `no certificate at ${url}`).to.match(refused);
      const plain = await rejection(
        mqtt.connectAsync(url.replace('mqtts:', 'mqtt:'), { clientId: A, protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 3000 }),
      );
      expect(plain, `plain MQTT at ${url}`).to.be.instanceOf(Error);
    }
    // A device certificate on the backend listener (where client ids are free), and the server's on the device listener.
    expect(String(await rejection(mqtt.connectAsync(broker.backendUrl, options(A))))).to.match(refused);
    expect(String(await rejection(mqtt.connectAsync(broker.deviceUrl, options(SERVER))))).to.match(refused);
  });

  it("device A never receives device B's commands, whatever it subscribes to; B receives its own", async () => {
    const a = await connect(A);
    const b = await connect(B);
    const server = await connect(SERVER);

    // mosquitto 2.0 grants these subscriptions (SUBACK QoS 1) and applies the
    // read ACL to every message it would deliver: nothing of B's ever arrives.
    const forbidden = [topic(B, 'command'), 'provision/+/command', 'provision/#', '#'];
    await a.client.subscribeAsync(forbidden, { qos: 1 });
    await a.client.subscribeAsync(topic(A, 'command'), { qos: 1 });
    await b.client.subscribeAsync(topic(B, 'command'), { qos: 1 });

    await server.client.publishAsync(topic(B, 'command'), 'sealed-for-B', { qos: 1 });
    await server.client.publishAsync(topic(A, 'command'), 'sealed-for-A', { qos: 1 });
    expect((await b.waitFor('sealed-for-B')).topic).to.equal(topic(B, 'command'));
    await a.waitFor('sealed-for-A');
    // A's own command may arrive once per matching subscription; B's never.
    expect(a.received.length).to.be.at.least(1);
    expect(
      a.received.every((m) => m.payload === 'sealed-for-A' && m.topic === topic(A, 'command')),
      JSON.stringify(a.received),
    ).to.equal(true);
    expect(b.received.map((m) => m.payload)).to.deep.equal(['sealed-for-B']);
  });

  it("MQTT 3.1.1 devices likewise: B's command never reaches A", async () => {
    const a = await connect(A, { protocolVersion: 4 });
    const server = await connect(SERVER);
    await a.client.subscribeAsync([topic(B, 'command'), topic(A, 'command')], { qos: 1 });
    await server.client.publishAsync(topic(B, 'command'), 'v4-for-B', { qos: 1 });
    await server.client.publishAsync(topic(A, 'command'), 'v4-for-A', { qos: 1 });
    await a.waitFor('v4-for-A');
    expect(a.received.map((m) => m.payload)).to.deep.equal(['v4-for-A']);
  });

  it("device A cannot publish B's acks, enrollments or reports (PUBACK 0x87); the server receives only A's own", async () => {
    const server = await connect(SERVER);
    await server.client.subscribeAsync([topic('+', 'ack'), topic('+', 'enroll'), topic('+', 'report')], { qos: 1 });
    const a = await connect(A);

    for (const kind of ['ack', 'enroll', 'report'] as const) {
      const err = await rejection(a.client.publishAsync(topic(B, kind), `forged-${kind}`, { qos: 1 }));
      expect(errorCode(err), kind).to.equal(135);
      await a.client.publishAsync(topic(A, kind), `own-${kind}`, { qos: 1 });
      expect((await server.waitFor(`own-${kind}`)).topic).to.equal(topic(A, kind));
    }
    // A device cannot publish commands (to anyone, itself included).
    expect(errorCode(await rejection(a.client.publishAsync(topic(A, 'command'), 'self-command', { qos: 1 })))).to.equal(135);
    await a.client.publishAsync(topic(A, 'ack'), 'sentinel', { qos: 1 });
    await server.waitFor('sentinel');
    expect(server.received.map((m) => m.payload)).to.deep.equal(['own-ack', 'own-enroll', 'own-report', 'sentinel']);
  });

  it("an MQTT 3.1.1 device's forged ack is acknowledged but never delivered", async () => {
    const server = await connect(SERVER);
    await server.client.subscribeAsync(topic('+', 'ack'), { qos: 1 });
    const a = await connect(A, { protocolVersion: 4 });
    await a.client.publishAsync(topic(B, 'ack'), 'forged-v4', { qos: 1 }); // 3.1.1 has no PUBACK reason code
    await a.client.publishAsync(topic(A, 'ack'), 'own-v4', { qos: 1 });
    await server.waitFor('own-v4');
    expect(server.received.map((m) => m.payload)).to.deep.equal(['own-v4']);
  });

  it("device A cannot connect as B: its client id is forced to its certificate's name, B keeps its session", async () => {
    // B holds a persistent session with a queued command while offline.
    const b1 = await connect(B, { clean: false, properties: { sessionExpiryInterval: 300 } });
    await b1.client.subscribeAsync(topic(B, 'command'), { qos: 1 });
    await b1.client.endAsync();
    const server = await connect(SERVER);
    await server.client.publishAsync(topic(B, 'command'), 'queued-for-B', { qos: 1 });

    // A asks for B's client id and B's session.
    const a = await connect(A, { clientId: B, clean: false, properties: { sessionExpiryInterval: 300 } });
    const connack = await new Promise<{ sessionPresent: boolean }>((resolve) => {
      // connectAsync resolved after CONNACK; mqtt.js keeps the packet on the client.
      resolve({ sessionPresent: sessionPresent(a.client) });
    });
    expect(connack.sessionPresent, "A must not get B's session").to.equal(false);
    await a.client.subscribeAsync(topic(A, 'command'), { qos: 1 });
    await server.client.publishAsync(topic(A, 'command'), 'for-A', { qos: 1 });
    await a.waitFor('for-A');
    expect(a.received.map((m) => m.payload)).to.deep.equal(['for-A']);

    // B comes back: its session and the queued command are intact, and A's
    // connection did not take B's id (B connecting does not kick A off).
    let aClosed = false;
    a.client.on('close', () => {
      aClosed = true;
    });
    const b2 = await connect(B, { clean: false, properties: { sessionExpiryInterval: 300 } });
    expect(sessionPresent(b2.client)).to.equal(true);
    await b2.waitFor('queued-for-B');
    await server.client.publishAsync(topic(A, 'command'), 'for-A-again', { qos: 1 });
    await a.waitFor('for-A-again');
    expect(aClosed).to.equal(false);
    expect(broker.log()).to.match(new RegExp(`New client connected from \\S+ as ${A} `));
  });

  it("the agent self-test's broker probe with a device certificate stops at TLS: the running device keeps its connection; refused certificates fail", async () => {
    const a = await connect(A, { clean: false, properties: { sessionExpiryInterval: 300 } });
    await a.client.subscribeAsync(topic(A, 'command'), { qos: 1 });
    let aClosed = false;
    a.client.on('close', () => {
      aClosed = true;
    });
    const c = creds.get(A);
    if (!c) throw new Error('no credentials for A');
    const ok = await probeTlsIdentity({ url: broker.deviceUrl, ca: c.ca, cert: c.cert, key: c.key, timeoutMs: 5000 });
    expect(ok.ok, ok.reason).to.equal(true);
    expect(ok.reason).to.match(/client certificate accepted/);
    const rogue = await probeTlsIdentity({ url: broker.deviceUrl, ca: c.ca, cert: rogueB.cert, key: rogueB.key, timeoutMs: 5000 });
    expect(rogue.ok, rogue.reason).to.equal(false);
    expect(rogue.fix).to.match(/refused the client certificate/);
    const wrongListener = await probeTlsIdentity({ url: broker.backendUrl, ca: c.ca, cert: c.cert, key: c.key, timeoutMs: 5000 });
    expect(wrongListener.ok, wrongListener.reason).to.equal(false);
    // The device's own connection was never taken over: it still receives its commands.
    const server = await connect(SERVER);
    await server.client.publishAsync(topic(A, 'command'), 'after-probe', { qos: 1 });
    await a.waitFor('after-probe');
    expect(aClosed).to.equal(false);
  });

  it('several server processes share the identity with their own client ids, none kicking another off', async () => {
    const one = await connect(SERVER, { clientId: 'provision-server-one' });
    let oneClosed = false;
    one.client.on('close', () => {
      oneClosed = true;
    });
    const two = await connect(SERVER, { clientId: 'provision-server-two' });
    const b = await connect(B);
    await b.client.subscribeAsync(topic(B, 'command'), { qos: 1 });
    await one.client.publishAsync(topic(B, 'command'), 'from-one', { qos: 1 });
    await two.client.publishAsync(topic(B, 'command'), 'from-two', { qos: 1 });
    await b.waitFor('from-one');
    await b.waitFor('from-two');
    expect(oneClosed).to.equal(false);
    expect(broker.log()).to.match(/New client connected from \S+ as provision-server-one /);
    expect(broker.log()).to.match(/New client connected from \S+ as provision-server-two /);
  });

  it('the server identity reads acks, enrollments and reports (also through $share) and writes commands, but cannot forge acks', async () => {
    const server = await connect(SERVER);
    const grants = await server.client.subscribeAsync(['$share/provision-servers/provision/+/ack', topic('+', 'enroll')], { qos: 1 });
    expect(grants.map((g) => g.qos)).to.deep.equal([1, 1]);
    // serve's report session: a client id of its own (ID-report), the same identity, a shared subscription.
    const reports = await connect(SERVER, { clientId: 'provision-server-test-report' });
    expect((await reports.client.subscribeAsync('$share/provision-server/provision/+/report', { qos: 1 })).map((g) => g.qos)).to.deep.equal([1]);
    const a = await connect(A);
    const b = await connect(B);
    await a.client.publishAsync(topic(A, 'ack'), 'ack-A', { qos: 1 });
    await b.client.publishAsync(topic(B, 'enroll'), 'enroll-B', { qos: 1 });
    await a.client.publishAsync(topic(A, 'report'), 'report-A', { qos: 1 });
    expect((await server.waitFor('ack-A')).topic).to.equal(topic(A, 'ack'));
    expect((await server.waitFor('enroll-B')).topic).to.equal(topic(B, 'enroll'));
    expect((await reports.waitFor('report-A')).topic).to.equal(topic(A, 'report'));
    expect(errorCode(await rejection(server.client.publishAsync(topic(A, 'ack'), 'forged-by-server', { qos: 1 })))).to.equal(135);

    // serve's shared-subscription probe: its own topic under provision/_server/, out of every device's reach.
    await server.client.subscribeAsync('$share/provision-server/provision/_server/#', { qos: 1 });
    await a.client.subscribeAsync('provision/_server/#', { qos: 1 });
    expect(errorCode(await rejection(a.client.publishAsync('provision/_server/shared-probe-x', 'device-probe', { qos: 1 })))).to.equal(135);
    await server.client.publishAsync('provision/_server/shared-probe-1', 'probe', { qos: 1 });
    await server.waitFor('probe');
    await a.client.subscribeAsync(topic(A, 'command'), { qos: 1 });
    await server.client.publishAsync(topic(A, 'command'), 'after-probe', { qos: 1 });
    await a.waitFor('after-probe');
    expect(a.received.map((m) => m.payload)).to.not.include('probe');
  });
});

/** The CONNACK's session-present flag: mqtt.js keeps the packet on the client (a private member of its types). */
function sessionPresent(client: object): boolean {
  const packet: unknown = Reflect.get(client, 'connackPacket');
  return typeof packet === 'object' && packet !== null && 'sessionPresent' in packet && Boolean(packet.sessionPresent);
}
