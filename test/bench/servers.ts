/**
 * Several servers, one run, two parts.
 *
 * Part 1, the send path (the figure): commands/s through CommandSender
 * (seq allocated, sealed to the device's key, recorded, published to mosquitto
 * at QoS 1, marked sent; group commit), what `send` and the HTTP API use, for
 * SQLite in 1 process, PostgreSQL in 1 process and PostgreSQL in 2 processes at
 * once. Each process is a child (servers-sender.ts) with its own CommandSender
 * on the same registry, sending one command to each of its own half of one
 * registered fleet, `sendConcurrency` in flight; the figure is all commands
 * over the time from the first start to the last finish, against the seal
 * floor. Then, in the first process alone, the parts: node-jose seal to the
 * registered keys, and the registry's writes batched as the group commit does.
 * SQLite commits with synchronous=FULL; the PostgreSQL cluster is a throwaway
 * test one with fsync off.
 *
 * Part 2, a rollout through `serve` child processes, 1 and 2 on one PostgreSQL
 * and 1 on the SQLite file of its data directory: a fresh registry,
 * `boards` simulated boards registered through the storage interface
 * (test/server/sim-fleet.ts: every board opens its command with the full
 * checks and answers with a signed, encrypted ack), mosquitto, and a rollout
 * (POST /rollouts on the first serve) to all of them with no rate limit and
 * `concurrency` in flight. Two figures each, from the POST:
 *   - sent/s: to the moment every target is sent (the lease holder's engine:
 *     claim, seal, record, mark sent under the lease, publish);
 *   - applied/s: to the moment every ack is recorded (acks split between the
 *     serves by `$share`).
 * One engine drives a rollout at a time (the lease), so a second serve adds
 * ack handling, not sealing. Everything (serves, boards, mosquitto,
 * PostgreSQL) shares this machine's cores.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { newP256Jwk, toPublicJwk, type JwkSet, type PublicJwk } from '../../protocol/index.js';
import { initDataDir } from '../../server/data-dir.js';
import { exportServer, readJoinFile, writeJoinedDataDir } from '../../server/keys/server-join.js';
import { openStorage, parseRegistryLocation } from '../../server/storage/open.js';
import type { Storage } from '../../server/storage/types.js';
import { freePort, startMosquittoProcess } from '../helpers/mosquitto-process.js';
import { NO_POSTGRES, postgresBin, startPgCluster, type PgCluster } from '../helpers/pg-cluster.js';
import { startServeProcess, type ServeProcess } from '../server/run-serve.js';
import type { SenderReply, SenderRequest } from './servers-sender.js';
import { makeSimDevice, SimFleet, type SimDevice } from '../server/sim-fleet.js';

export interface ServersRun {
  registry: 'postgres' | 'sqlite';
  serves: number;
  boards: number;
  /** From the POST to every target sent. */
  sent_s: number;
  sent_per_s: number;
  /** From the POST to every ack recorded (all applied). */
  applied_s: number;
  applied_per_s: number;
  /** sent/s against the seal floor (as the server section's sealed+published). */
  ratio_to_seal_floor: number;
}

/** One configuration of the send path: `processes` children, each its own CommandSender, on one registry. */
export interface SendRun {
  registry: 'postgres' | 'sqlite';
  processes: number;
  commands: number;
  /** All commands over the time from the first process's start to the last one's finish. */
  seconds: number;
  commands_per_s: number;
  ratio_to_seal_floor: number;
  /** Each process's own commands/s (its share over its own time). */
  per_process_per_s: number[];
  /** The parts alone, measured in the first process after the run (the others idle): node-jose seal to the registered keys ... */
  seal_only_per_s: number;
  /** ... and the registry's writes (allocate seq, record, mark sent) batched `concurrency` per transaction, as the group commit does. */
  registry_batched_per_s: number;
}

export interface ServersFigures {
  seal_floor_per_s: number;
  /** Part 1: commands/s through the server's send path (CommandSender), what `send` and the HTTP API use. */
  send: {
    devices: number;
    commands: number;
    concurrency: number;
    /** How each registry commits (the PostgreSQL cluster is a throwaway test one). */
    durability: { sqlite: string; postgres: string };
    runs: SendRun[];
    /** The target: SQLite, 1 process, >= 0.5 of the seal floor; met or missed by how much, and why. */
    target?: { ratio: number; met: boolean; off_by: number; why: string };
  };
  /** Part 2: a rollout through `serve` processes (one engine drives it: the lease). */
  rollout?: { boards: number; concurrency: number; runs: ServersRun[] };
  /** Why a configuration did not run (no PostgreSQL here). */
  skipped: string[];
}

const PARAMS = { sensor: { sample_interval_s: 60 } };
const round = (x: number, d = 1): number => Math.round(x * 10 ** d) / 10 ** d;

/** RFC 7638 thumbprint of a P-256 public key. */
function thumbprint(x: string, y: string): string {
  return createHash('sha256').update(`{"crv":"P-256","kty":"EC","x":"${x}","y":"${y}"}`).digest('base64url');
}

function fleetKey(): PublicJwk {
  const { x, y } = newP256Jwk();
  return { kty: 'EC', crv: 'P-256', x, y, kid: thumbprint(x, y), use: 'enc', alg: 'ECDH-ES+A256KW' };
}

export async function benchServers(options: {
  /** Part 1: commands sent in each configuration (split between the processes), `sendConcurrency` in flight per process. */
  commands: number;
  sendConcurrency: number;
  sealSample: number;
  /** Part 2 (0: skipped): boards of the rollout, `concurrency` in flight. */
  boards: number;
  concurrency: number;
  sealFloorMs: number;
  log: (s: string) => void;
}): Promise<ServersFigures> {
  const { boards: n, concurrency } = options;
  const dir = await mkdtemp(join(tmpdir(), 'bench-servers-'));
  let pg: PgCluster | undefined;
  const skipped: string[] = [];
  const floor = 1000 / options.sealFloorMs;
  try {
    const first = join(dir, 'data-0');
    // Each configuration gets a mosquitto of its own (given to serve with --broker): a stopped serve's
    // persistent session stays in the $share group, and the broker would go on handing it a share of the acks.
    await initDataDir(first, { broker: { url: 'mqtt://127.0.0.1:1883' } });
    if (postgresBin()) pg = await startPgCluster();
    else skipped.push(`postgres: ${NO_POSTGRES}`);

    // ---- part 1: the send path ----
    const sendConfigs: { registry: 'postgres' | 'sqlite'; processes: number }[] = [
      { registry: 'sqlite', processes: 1 },
      { registry: 'postgres', processes: 1 },
      { registry: 'postgres', processes: 2 },
    ];
    const warmup = 50;
    const devices = options.commands + warmup * 2;
    const fleet = Array.from({ length: devices }, (_, i) => ({ id: `dev-${String(i).padStart(5, '0')}`, encryption: fleetKey() }));
    const sendRuns: SendRun[] = [];
    for (const [k, config] of sendConfigs.entries()) {
      if (config.registry === 'postgres' && !pg) continue;
      options.log(
        `servers: send path, ${config.processes} process${config.processes > 1 ? 'es' : ''} on ${config.registry}, ${options.commands} commands to ${devices} registered devices ...`,
      );
      const location =
        config.registry === 'postgres' ? await (pg as PgCluster).createDatabase(`bench_send_${process.pid}_${k}`) : join(dir, `send-${k}.sqlite`);
      const broker = await startMosquittoProcess({ persistence: false });
      try {
        sendRuns.push(
          await sendOnce({
            location,
            registry: config.registry,
            processes: config.processes,
            fleet,
            warmup,
            keysDir: join(first, 'keys'),
            brokerUrl: broker.url,
            concurrency: options.sendConcurrency,
            sealSample: options.sealSample,
            floor,
          }),
        );
      } finally {
        await broker.close();
      }
    }
    const send = {
      devices,
      commands: options.commands,
      concurrency: options.sendConcurrency,
      durability: {
        sqlite: 'WAL, synchronous=FULL (fsync per transaction)',
        postgres: 'throwaway test cluster (test/helpers/pg-cluster.ts): fsync=off, synchronous_commit=off, full_page_writes=off',
      },
      runs: sendRuns,
      ...(sqliteTarget(sendRuns, floor) ?? {}),
    };
    if (n <= 0) return { seal_floor_per_s: round(floor), send, skipped };

    // ---- part 2: a rollout through serve processes ----
    const runs: ServersRun[] = [];
    const second = join(dir, 'data-1');
    const joinFile = join(dir, 'server.join');
    await writeFile(joinFile, `${JSON.stringify(await exportServer(first))}\n`, { mode: 0o600 });
    await writeJoinedDataDir(second, await readJoinFile(joinFile), {});
    const trust = JSON.parse(await readFile(join(first, 'keys', 'trust.jwks'), 'utf8')) as JwkSet;
    const token = (await readFile(join(first, 'http.token'), 'utf8')).trim();
    const boards: SimDevice[] = [];
    for (let i = 0; i < n; i += 200)
      boards.push(...(await Promise.all(Array.from({ length: Math.min(200, n - i) }, (_, j) => makeSimDevice(`bench-${String(i + j).padStart(5, '0')}`)))));

    const configs: { registry: 'postgres' | 'sqlite'; serves: number }[] = [
      { registry: 'postgres', serves: 1 },
      { registry: 'postgres', serves: 2 },
      { registry: 'sqlite', serves: 1 },
    ];
    for (const [k, config] of configs.entries()) {
      if (config.registry === 'postgres' && !pg) continue;
      options.log(`servers: ${config.serves} serve${config.serves > 1 ? 's' : ''} on ${config.registry}, rollout to ${n} boards ...`);
      const location =
        config.registry === 'postgres' ? await (pg as PgCluster).createDatabase(`bench_servers_${process.pid}_${k}`) : join(first, `bench-${k}.sqlite`);
      const broker = await startMosquittoProcess({ persistence: false });
      try {
        runs.push(
          await runOnce({
            location,
            serves: config.serves,
            dataDirs: [first, second],
            boards,
            brokerUrl: broker.url,
            trust,
            token,
            concurrency,
            sealFloorMs: options.sealFloorMs,
          }),
        );
      } finally {
        await broker.close();
      }
    }
    return { seal_floor_per_s: round(floor), send, rollout: { boards: n, concurrency, runs }, skipped };
  } finally {
    await pg?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * SQLite in 1 process against 0.5 of the seal floor, and why it lands where it
 * does: one thread seals and writes the registry in series, so its ceiling is
 * 1 / (1/seal-only + 1/registry-only), both measured in that process.
 */
function sqliteTarget(runs: SendRun[], floor: number): { target: NonNullable<ServersFigures['send']['target']> } | undefined {
  const r = runs.find((x) => x.registry === 'sqlite' && x.processes === 1);
  if (!r) return undefined;
  const met = r.ratio_to_seal_floor >= 0.5;
  const ceiling = 1 / (1 / r.seal_only_per_s + 1 / r.registry_batched_per_s);
  const why =
    `sealing-bound: one Node.js thread seals (node-jose alone ${r.seal_only_per_s}/s = ${round(r.seal_only_per_s / floor, 2)} of the floor: ` +
    `${round(floor / r.seal_only_per_s, 1)}x the node:crypto seal's time, each device's key imported) and writes the registry ` +
    `(alone, batched ${r.registry_batched_per_s}/s, synchronous=FULL) in series: ceiling ${round(ceiling)}/s = ${round(ceiling / floor, 2)} of the floor, publishing and its PUBACKs take the rest; ` +
    `the second of the 2 cores runs mosquitto (none spare for seal workers)`;
  return { target: { ratio: r.ratio_to_seal_floor, met, off_by: round(0.5 / r.ratio_to_seal_floor, 2), why } };
}

/** A child running servers-sender.js, and the next reply of each kind. */
class SenderChild {
  readonly #child: ChildProcess;
  #waiting: { resolve: (r: SenderReply) => void; reject: (e: Error) => void } | undefined;
  #exited = false;

  constructor() {
    this.#child = fork(fileURLToPath(new URL('./servers-sender.js', import.meta.url)), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.#child.on('message', (m: SenderReply) => {
      const w = this.#waiting;
      this.#waiting = undefined;
      if (m.op === 'error') w?.reject(new Error(`sender child: ${m.message}`));
      else w?.resolve(m);
    });
    this.#child.once('exit', (code) => {
      this.#exited = true;
      this.#waiting?.reject(new Error(`sender child exited ${code}`));
      this.#waiting = undefined;
    });
  }

  request<K extends SenderReply['op']>(req: SenderRequest, op: K): Promise<Extract<SenderReply, { op: K }>> {
    return new Promise((resolve, reject) => {
      if (this.#exited) return reject(new Error('sender child exited'));
      this.#waiting = {
        resolve: (r) => (r.op === op ? resolve(r as Extract<SenderReply, { op: K }>) : reject(new Error(`sender child: expected ${op}, got ${r.op}`))),
        reject,
      };
      this.#child.send(req);
    });
  }

  async exit(): Promise<void> {
    if (this.#exited) return;
    const gone = new Promise<void>((resolve) => this.#child.once('exit', () => resolve()));
    this.#child.send({ op: 'exit' } satisfies SenderRequest);
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), 10_000);
    await gone;
    clearTimeout(timer);
  }
}

async function sendOnce(o: {
  location: string;
  registry: 'postgres' | 'sqlite';
  processes: number;
  fleet: { id: string; encryption: PublicJwk }[];
  warmup: number;
  keysDir: string;
  brokerUrl: string;
  concurrency: number;
  sealSample: number;
  floor: number;
}): Promise<SendRun> {
  // The fleet, registered through the storage interface (parallel batches: PostgreSQL's pool works them concurrently).
  const storage: Storage = await openStorage(parseRegistryLocation(o.location), { create: true });
  try {
    for (let i = 0; i < o.fleet.length; i += 50)
      await Promise.all(o.fleet.slice(i, i + 50).map((d) => storage.devices.add({ id: d.id, userId: 'bench', origin: 'jwks', encryption: d.encryption })));
  } finally {
    await storage.close();
  }
  const ids = o.fleet.map((d) => d.id);
  const measured = ids.slice(o.warmup * 2);
  const share = Math.ceil(measured.length / o.processes);
  const children = Array.from({ length: o.processes }, () => new SenderChild());
  try {
    await Promise.all(
      children.map((c, i) =>
        c.request(
          {
            op: 'init',
            location: o.location,
            keysDir: o.keysDir,
            brokerUrl: o.brokerUrl,
            clientId: `bench-send-${process.pid}-${i}`,
            ids: measured.slice(i * share, (i + 1) * share),
            // Each process warms up on devices of its own, outside the measured ones.
            warmupIds: ids.slice(i * o.warmup, (i + 1) * o.warmup),
            concurrency: o.concurrency,
          },
          'ready',
        ),
      ),
    );
    const done = await Promise.all(children.map((c) => c.request({ op: 'go' }, 'done')));
    const parts = await (children[0] as SenderChild).request({ op: 'parts', sample: o.sealSample }, 'parts');
    const seconds = (Math.max(...done.map((d) => d.end)) - Math.min(...done.map((d) => d.start))) / 1000;
    const rate = measured.length / seconds;
    return {
      registry: o.registry,
      processes: o.processes,
      commands: measured.length,
      seconds: round(seconds, 2),
      commands_per_s: round(rate),
      ratio_to_seal_floor: round(rate / o.floor, 3),
      per_process_per_s: done.map((d, i) => round(measured.slice(i * share, (i + 1) * share).length / ((d.end - d.start) / 1000))),
      seal_only_per_s: round(parts.seal_only_per_s),
      registry_batched_per_s: round(parts.registry_batched_per_s),
    };
  } finally {
    await Promise.all(children.map((c) => c.exit()));
  }
}

async function runOnce(o: {
  location: string;
  serves: number;
  dataDirs: string[];
  boards: SimDevice[];
  brokerUrl: string;
  trust: JwkSet;
  token: string;
  concurrency: number;
  sealFloorMs: number;
}): Promise<ServersRun> {
  const storage: Storage = await openStorage(parseRegistryLocation(o.location), { create: true });
  const serves: ServeProcess[] = [];
  let fleet: SimFleet | undefined;
  try {
    for (const d of o.boards) {
      // A fresh registry starts every board's seq again.
      d.lastSeq = 0;
      d.jtis.clear();
      d.applied = [];
      d.received = [];
    }
    for (let i = 0; i < o.boards.length; i += 50)
      await Promise.all(
        o.boards
          .slice(i, i + 50)
          .map((d) =>
            storage.devices.add({ id: d.id, userId: 'bench', origin: 'jwks', signing: toPublicJwk(d.signing), encryption: toPublicJwk(d.encryption) }),
          ),
      );
    fleet = await SimFleet.connect(o.brokerUrl, { trust: o.trust });
    for (const d of o.boards) fleet.add(d);
    const httpPort = await freePort();
    for (let i = 0; i < o.serves; i++) {
      const args = [
        '--data',
        o.dataDirs[i] as string,
        '--broker',
        o.brokerUrl,
        '--registry',
        o.location,
        '--shared',
        'on',
        '--client-id',
        `bench-servers-${process.pid}-${i}`,
      ];
      serves.push(await startServeProcess([...args, ...(i === 0 ? ['--http', `127.0.0.1:${httpPort}`] : [])], 30_000));
    }
    const t0 = performance.now();
    const res = await fetch(`http://127.0.0.1:${httpPort}/rollouts`, {
      method: 'POST',
      headers: { authorization: `Bearer ${o.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ action: 'update', params: PARAMS, selector: { all: true }, concurrency: o.concurrency }),
    });
    const created = (await res.json()) as { id?: string; error?: unknown };
    if (res.status !== 201 || !created.id) throw new Error(`POST /rollouts: ${res.status} ${JSON.stringify(created)}`);
    let sentS: number | undefined;
    const deadline = Date.now() + 10 * 60_000;
    for (;;) {
      const c = await storage.rollouts.counts(created.id);
      const s = (performance.now() - t0) / 1000;
      if (sentS === undefined && c.pending + c.sending === 0) sentS = s;
      if (c.applied === o.boards.length) {
        const n = o.boards.length;
        const appliedS = s;
        const sent = sentS ?? s;
        return {
          registry: o.location.startsWith('postgres') ? 'postgres' : 'sqlite',
          serves: o.serves,
          boards: n,
          sent_s: round(sent, 2),
          sent_per_s: round(n / sent),
          applied_s: round(appliedS, 2),
          applied_per_s: round(n / appliedS),
          ratio_to_seal_floor: round(n / sent / (1000 / o.sealFloorMs), 3),
        };
      }
      if (Date.now() > deadline) throw new Error(`rollout did not finish: ${JSON.stringify(c)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    await Promise.all(serves.map((s) => s.stop()));
    await fleet?.close();
    await storage.close();
  }
}
