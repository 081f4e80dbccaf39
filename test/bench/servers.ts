/**
 * Several `serve` processes: commands/s of a rollout through the server's real
 * path, with 1 and 2 `serve` child processes on one PostgreSQL and 1 on the
 * SQLite file of its data directory, in one run. Each configuration: a fresh
 * registry, `boards` simulated boards registered through the storage interface
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
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { toPublicJwk, type JwkSet } from '../../protocol/index.js';
import { initDataDir } from '../../server/data-dir.js';
import { exportServer, readJoinFile, writeJoinedDataDir } from '../../server/keys/server-join.js';
import { openStorage, parseRegistryLocation } from '../../server/storage/open.js';
import type { Storage } from '../../server/storage/types.js';
import { freePort, startMosquittoProcess } from '../helpers/mosquitto-process.js';
import { NO_POSTGRES, postgresBin, startPgCluster, type PgCluster } from '../helpers/pg-cluster.js';
import { startServeProcess, type ServeProcess } from '../server/run-serve.js';
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

export interface ServersFigures {
  boards: number;
  concurrency: number;
  seal_floor_per_s: number;
  runs: ServersRun[];
  /** Why a configuration did not run (no PostgreSQL here). */
  skipped: string[];
}

const PARAMS = { sensor: { sample_interval_s: 60 } };
const round = (x: number, d = 1): number => Math.round(x * 10 ** d) / 10 ** d;

export async function benchServers(options: { boards: number; concurrency: number; sealFloorMs: number; log: (s: string) => void }): Promise<ServersFigures> {
  const { boards: n, concurrency } = options;
  const dir = await mkdtemp(join(tmpdir(), 'bench-servers-'));
  let pg: PgCluster | undefined;
  const skipped: string[] = [];
  const runs: ServersRun[] = [];
  try {
    const first = join(dir, 'data-0');
    // Each configuration gets a mosquitto of its own (given to serve with --broker): a stopped serve's
    // persistent session stays in the $share group, and the broker would go on handing it a share of the acks.
    await initDataDir(first, { broker: { url: 'mqtt://127.0.0.1:1883' } });
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
    if (postgresBin()) pg = await startPgCluster();
    else skipped.push(`postgres: ${NO_POSTGRES}`);
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
    return { boards: n, concurrency, seal_floor_per_s: round(1000 / options.sealFloorMs), runs, skipped };
  } finally {
    await pg?.stop();
    await rm(dir, { recursive: true, force: true });
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
