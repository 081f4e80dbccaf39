/**
 * Child process of the end-to-end benchmark: N simulated agents, each with its
 * own MQTT connection, client id and persistent session (clean: false, QoS 1),
 * each holding its own keys and replay state, opening every command with the
 * full protocol checks (openCommand) and answering with a signed, encrypted
 * ack (sealAck). What it does not do that the real agent does: persist state
 * to disk and drive GPIO (the agent's apply step), so the figure is the
 * protocol + broker path.
 *
 * stdin: one JSON line {url, prefix, serverId, count, trust: PublicJwk[]}.
 * stdout: one JSON line {ready: true, devices: [{id, signing, encryption}]}
 * (public JWKs) once every agent is subscribed; then it runs until stdin closes.
 */
import type { Socket } from 'node:net';
import { createInterface } from 'node:readline';
import mqtt, { type MqttClient } from 'mqtt';
import {
  KeyRing,
  UNTRUSTED_CLOCK,
  ackTopic,
  checkReplay,
  commandTopic,
  generateEncryptionKey,
  generateSigningKey,
  isProtocolError,
  openCommand,
  sealAck,
  toPublicJwk,
  type PrivateJwk,
  type PublicJwk,
} from '../../protocol/index.js';

interface Setup {
  url: string;
  prefix: string;
  serverId: string;
  count: number;
  idPrefix: string;
  /** Set TCP_NODELAY on each connection (mqtt.js leaves Nagle on). */
  noDelay: boolean;
  /** Server signing key (pinned) and server encryption key (acks are sealed to it). */
  serverSigning: PublicJwk;
  serverEncryption: PublicJwk;
}

interface Sim {
  id: string;
  signing: PrivateJwk;
  encryption: PrivateJwk;
  decryption: KeyRing;
  lastSeq: number;
  jtis: Set<string>;
  client?: MqttClient;
}

const rl = createInterface({ input: process.stdin });
const first = await new Promise<string>((resolve) => rl.once('line', resolve));
const setup = JSON.parse(first) as Setup;
const verification = await KeyRing.create([setup.serverSigning]);

const sims: Sim[] = [];
for (let i = 0; i < setup.count; i++) {
  const [signing, encryption] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
  sims.push({
    id: `${setup.idPrefix}${String(i).padStart(5, '0')}`,
    signing,
    encryption,
    decryption: await KeyRing.create([encryption]),
    lastSeq: 0,
    jtis: new Set(),
  });
}

async function handle(sim: Sim, payload: Buffer): Promise<void> {
  let ref: string;
  let seq: number;
  let status: 'applied' | 'rejected' = 'applied';
  let code = 'OK';
  try {
    const { claims } = await openCommand(payload, {
      deviceId: sim.id,
      serverId: setup.serverId,
      decryption: sim.decryption,
      verification,
      clock: UNTRUSTED_CLOCK,
      replay: { check: (s, j) => checkReplay({ lastSeq: sim.lastSeq, recentJtis: sim.jtis }, s, j) },
    });
    sim.lastSeq = claims.seq;
    sim.jtis.add(claims.jti);
    if (sim.jtis.size > 256) sim.jtis.delete(sim.jtis.values().next().value as string);
    ref = claims.jti;
    seq = claims.seq;
  } catch (err) {
    if (!isProtocolError(err) || !err.refused?.jti) return; // unauthenticated: drop, never ack
    ref = err.refused.jti;
    seq = err.refused.seq ?? 0;
    status = 'rejected';
    code = err.code;
  }
  const { token } = await sealAck(
    { deviceId: sim.id, serverId: setup.serverId, ref, seq, status, code },
    { signer: sim.signing, recipient: setup.serverEncryption },
  );
  await sim.client?.publishAsync(ackTopic(setup.prefix, sim.id), token, { qos: 1 });
}

async function connect(sim: Sim): Promise<void> {
  const client = mqtt.connect(setup.url, { clientId: `sim-${sim.id}`, clean: false, protocolVersion: 4, reconnectPeriod: 1000, keepalive: 60 });
  sim.client = client;
  // In order, one at a time per agent, as the real agent applies commands.
  let chain = Promise.resolve();
  client.on('message', (_topic, payload) => {
    chain = chain
      .then(() => handle(sim, payload))
      .catch((err: unknown) => {
        process.stderr.write(`sim ${sim.id}: ${String(err)}\n`);
      });
  });
  client.on('error', () => undefined);
  if (setup.noDelay) client.on('connect', () => (client.stream as Socket).setNoDelay(true));
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  await client.subscribeAsync(commandTopic(setup.prefix, sim.id), { qos: 1 });
}

// Connect in batches: a thousand simultaneous TLS-less CONNECTs is fine, but keep the
// broker's accept queue and our event loop comfortable.
for (let i = 0; i < sims.length; i += 50) await Promise.all(sims.slice(i, i + 50).map(connect));

process.stdout.write(
  `${JSON.stringify({ ready: true, devices: sims.map((s) => ({ id: s.id, signing: toPublicJwk(s.signing), encryption: toPublicJwk(s.encryption) })) })}\n`,
);

rl.on('close', () => {
  void Promise.all(sims.map((s) => s.client?.endAsync(true))).finally(() => process.exit(0));
});
