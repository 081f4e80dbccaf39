/**
 * End to end: command-to-verified-ack latency through mosquitto with N
 * simulated agents (a child process, one MQTT connection and session each:
 * see sim-agents.ts), at a steady rate. The clock starts just before the
 * server seals a command and stops when the server has decrypted and verified
 * the ack against the device's registered signing key.
 */
import { spawn } from 'node:child_process';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import mqtt from 'mqtt';
import {
  KeyRing,
  commandTopic,
  fleetFilter,
  generateEncryptionKey,
  generateSigningKey,
  openAck,
  parseTopic,
  sealCommand,
  toPublicJwk,
  type PublicJwk,
} from '../../protocol/index.js';
import { startMosquittoProcess } from '../helpers/mosquitto-process.js';

export interface E2eFigures {
  agents: number;
  tcp_nodelay: boolean;
  rate_per_s: number;
  duration_s: number;
  sent: number;
  acked: number;
  lost: number;
  p50_ms: number;
  p90_ms: number;
  p99_ms: number;
  max_ms: number;
  connect_all_s: number;
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

const PREFIX = 'provision';
const SERVER_ID = 'bench-server';

export interface E2eOptions {
  agents: number;
  ratePerSecond: number;
  durationSeconds: number;
  /** Commands sent first and left out of the figures (JIT, first use of each key). */
  warmup: number;
  /** TCP_NODELAY on every connection (broker, server, agents); mqtt.js leaves Nagle's algorithm on. */
  noDelay: boolean;
}

export async function benchE2e(options: E2eOptions): Promise<E2eFigures> {
  const broker = await startMosquittoProcess({ persistence: false, nofile: options.agents * 2 + 1024, tcpNoDelay: options.noDelay });
  const [signing, encryption] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
  const decryption = await KeyRing.create([encryption]);
  const child = spawn(process.execPath, [fileURLToPath(new URL('./sim-agents.js', import.meta.url))], { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    const t0 = performance.now();
    child.stdin.write(
      `${JSON.stringify({ url: broker.url, prefix: PREFIX, serverId: SERVER_ID, count: options.agents, idPrefix: 'sim-', noDelay: options.noDelay, serverSigning: toPublicJwk(signing), serverEncryption: toPublicJwk(encryption) })}\n`,
    );
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout }).once('line', resolve);
      child.once('exit', (code) => reject(new Error(`simulated agents exited ${code}`)));
    });
    const connectAll = (performance.now() - t0) / 1000;
    const ready = JSON.parse(line) as { devices: { id: string; signing: PublicJwk; encryption: PublicJwk }[] };
    const devices = ready.devices;
    const verification = await KeyRing.create(devices.map((d) => d.signing));

    const server = mqtt.connect(broker.url, { clientId: 'bench-server', clean: true, protocolVersion: 4 });
    if (options.noDelay) server.on('connect', () => (server.stream as Socket).setNoDelay(true));
    await new Promise<void>((resolve) => server.once('connect', () => resolve()));
    await server.subscribeAsync(fleetFilter(PREFIX, 'ack'), { qos: 1 });

    const started = new Map<string, number>();
    const latencies: number[] = [];
    let acked = 0;
    let seenWarm = 0;
    let onAllAcked: (() => void) | undefined;
    const total = options.warmup + Math.round(options.ratePerSecond * options.durationSeconds);
    server.on('message', (topic, payload) => {
      void (async () => {
        const t = parseTopic(PREFIX, topic);
        if (!t || t.kind !== 'ack') return;
        const { claims } = await openAck(payload, { serverId: SERVER_ID, deviceId: t.deviceId, decryption, verification });
        const begin = started.get(claims.ref);
        if (begin === undefined || claims.status !== 'applied') return;
        started.delete(claims.ref);
        const ms = performance.now() - begin;
        if (seenWarm < options.warmup) seenWarm++;
        else latencies.push(ms);
        acked++;
        if (acked === total) onAllAcked?.();
      })().catch((err: unknown) => process.stderr.write(`bench: ack: ${String(err)}\n`));
    });

    const seqs = new Map<string, number>();
    const sendOne = async (i: number): Promise<void> => {
      const d = devices[i % devices.length] as (typeof devices)[number];
      const seq = (seqs.get(d.id) ?? 0) + 1;
      seqs.set(d.id, seq);
      const begin = performance.now();
      const { token, claims } = await sealCommand(
        { serverId: SERVER_ID, deviceId: d.id, action: 'update', userId: 'bench', params: { sensor: { sample_interval_s: 60 } }, seq },
        { signer: signing, recipient: d.encryption },
      );
      started.set(claims.jti, begin);
      await server.publishAsync(commandTopic(PREFIX, d.id), token, { qos: 1 });
    };

    const allAcked = new Promise<void>((resolve) => {
      onAllAcked = resolve;
    });
    // A steady rate on an absolute schedule (no drift), sends not awaited one by one.
    const interval = 1000 / options.ratePerSecond;
    const begin = performance.now();
    const pending: Promise<void>[] = [];
    for (let i = 0; i < total; i++) {
      const due = begin + i * interval;
      const wait = due - performance.now();
      if (wait > 1) await new Promise((r) => setTimeout(r, wait));
      pending.push(sendOne(i));
    }
    await Promise.all(pending);
    await Promise.race([allAcked, new Promise((r) => setTimeout(r, 10_000))]);
    await server.endAsync();
    const sorted = [...latencies].sort((a, b) => a - b);
    const r = (x: number): number => Math.round(x * 100) / 100;
    return {
      agents: devices.length,
      tcp_nodelay: options.noDelay,
      rate_per_s: options.ratePerSecond,
      duration_s: options.durationSeconds,
      sent: total,
      acked,
      lost: total - acked,
      p50_ms: r(percentile(sorted, 50)),
      p90_ms: r(percentile(sorted, 90)),
      p99_ms: r(percentile(sorted, 99)),
      max_ms: r(sorted[sorted.length - 1] ?? NaN),
      connect_all_s: r(connectAll),
    };
  } finally {
    child.stdin.end();
    await new Promise((r) => {
      if (child.exitCode !== null) r(undefined);
      else {
        child.once('exit', r);
        setTimeout(() => child.kill('SIGKILL'), 5000).unref();
      }
    });
    await broker.close();
  }
}
