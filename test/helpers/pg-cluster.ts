/**
 * A throwaway PostgreSQL cluster for a test: `initdb` into a temp dir and
 * `pg_ctl start` on a free loopback port, as an unprivileged user (PostgreSQL
 * refuses to run as root: under root, the `postgres` user Debian's package
 * creates, else `nobody`). Each test database is made with `createDatabase`.
 * stop() shuts the cluster down (immediate) and removes its directory.
 *
 * Binaries: $PG_BIN, else the newest /usr/lib/postgresql/N/bin (Debian), else PATH.
 * Without them the suite is skipped with the reason, unless REQUIRE_POSTGRES=1
 * (CI) makes that a failure.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

export const NO_POSTGRES =
  'PostgreSQL not found (initdb/pg_ctl in $PG_BIN, /usr/lib/postgresql/*/bin or PATH; apt-get install -y postgresql; REQUIRE_POSTGRES=1 makes this a failure)';

export interface PgCluster {
  /** postgres://USER@127.0.0.1:PORT/postgres (trust auth on loopback). */
  url: string;
  port: number;
  dir: string;
  /** A URL of a new, empty database. */
  createDatabase(name?: string): Promise<string>;
  stop(): Promise<void>;
}

/** The directory holding initdb and pg_ctl, or undefined. */
export function postgresBin(): string | undefined {
  const has = (dir: string): boolean => existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'pg_ctl'));
  if (process.env.PG_BIN && has(process.env.PG_BIN)) return process.env.PG_BIN;
  const debian = '/usr/lib/postgresql';
  if (existsSync(debian)) {
    const versions = readdirSync(debian)
      .filter((v) => /^\d+$/.test(v))
      .sort((a, b) => Number(b) - Number(a));
    for (const v of versions) if (has(join(debian, v, 'bin'))) return join(debian, v, 'bin');
  }
  for (const dir of (process.env.PATH ?? '').split(':')) if (dir && has(dir)) return dir;
  return undefined;
}

/** Whether a missing PostgreSQL must fail the suite (CI) rather than skip it. */
export function postgresRequired(): boolean {
  return process.env.REQUIRE_POSTGRES === '1';
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/** The uid/gid to run PostgreSQL as: ourselves unless root. */
function runAs(): { uid: number; gid: number; name: string } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  for (const name of ['postgres', 'nobody']) {
    const r = spawnSync('id', ['-u', name], { encoding: 'utf8' });
    const g = spawnSync('id', ['-g', name], { encoding: 'utf8' });
    if (r.status === 0 && g.status === 0) return { uid: Number(r.stdout.trim()), gid: Number(g.stdout.trim()), name };
  }
  throw new Error('running as root and neither a postgres nor a nobody user exists to run PostgreSQL as');
}

function run(bin: string, args: string[], as: ReturnType<typeof runAs>): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(as ? { uid: as.uid, gid: as.gid } : {}), env: { ...process.env, LC_ALL: 'C' } });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${bin} ${args.join(' ')} exited ${code}: ${out.slice(-2000)}`))));
  });
}

let databases = 0;

export async function startPgCluster(): Promise<PgCluster> {
  const bin = postgresBin();
  if (!bin) throw new Error(NO_POSTGRES);
  const as = runAs();
  const dir = mkdtempSync(join(tmpdir(), 'pg-cluster-'));
  chmodSync(dir, 0o700);
  if (as) chownSync(dir, as.uid, as.gid);
  const data = join(dir, 'data');
  const user = as?.name ?? (process.env.USER || 'postgres');
  await run(join(bin, 'initdb'), ['-D', data, '-U', user, '-A', 'trust', '--no-sync', '-E', 'UTF8', '--locale=C'], as);
  const port = await freePort();
  // fsync off: a test cluster dies with its test; durability is not what is tested against it.
  const opts = `-c port=${port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=${dir} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB`;
  await run(join(bin, 'pg_ctl'), ['-D', data, '-l', join(dir, 'log'), '-o', opts, '-w', '-t', '60', 'start'], as);
  const base = `postgres://${encodeURIComponent(user)}@127.0.0.1:${port}`;
  let stopped = false;
  return {
    url: `${base}/postgres`,
    port,
    dir,
    async createDatabase(name?: string): Promise<string> {
      const db = name ?? `t${process.pid}_${++databases}`;
      const client = new pg.Client({ connectionString: `${base}/postgres` });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE "${db.replace(/"/g, '')}"`);
      } finally {
        await client.end();
      }
      return `${base}/${db}`;
    },
    async stop(): Promise<void> {
      if (stopped) return;
      stopped = true;
      await run(join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop'], as).catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
