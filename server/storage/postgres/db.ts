/**
 * The PostgreSQL connection pool of a PostgresStorage, and the three ways the
 * stores talk to it: `q` (one statement on any pooled connection), `tx(fn)`
 * (fn's statements on one connection inside BEGIN ... COMMIT, ROLLBACK on
 * error) and the `Sql` both hand out, so a store's helpers run the same inside
 * a transaction or outside one.
 *
 * node-postgres returns bigint (INT8) and NUMERIC as strings: this pool parses
 * both to Number (every value we keep is below 2^53: ms epochs, counters).
 *
 * A statement that fails because the database cannot be reached (the
 * connection was cut, refused, timed out; the server is shutting down) throws
 * RegistryError E_STORAGE_UNAVAILABLE with the cause's message: the caller
 * fails that one operation, and the next call takes a fresh connection. The
 * pool's 'error' event (an idle connection cut) is logged, never thrown.
 */
import pg from 'pg';
import { RegistryError } from '../errors.js';
import type { Logger } from '../../../lib/log.js';

/** Anything the pool may log (the server's Logger fits). */
export type PgLog = Pick<Logger, 'warn'>;

/** One statement's parameters. */
export type Params = readonly unknown[];

/** Statements, on the pool or on one transaction's connection. */
export interface Sql {
  /** The rows of one statement. */
  q<R extends object = Record<string, unknown>>(sql: string, params?: Params): Promise<R[]>;
  /** Its first row, or undefined. */
  one<R extends object = Record<string, unknown>>(sql: string, params?: Params): Promise<R | undefined>;
  /** How many rows it changed. */
  run(sql: string, params?: Params): Promise<number>;
}

export interface PgPoolOptions {
  /** Connections at most (default 10). */
  max?: number;
  log?: PgLog;
}

const INT8 = 20;
const NUMERIC = 1700;

/** The pool's own type parsers: INT8 and NUMERIC to Number; the rest as node-postgres does. */
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') => {
    if ((oid === INT8 || oid === NUMERIC) && format !== 'binary') return (v: string) => (v === null ? null : Number(v));
    return pg.types.getTypeParser(oid, format);
  }) as typeof pg.types.getTypeParser,
};

/** SQLSTATEs of a database that cannot be reached or is going away (class 08, admin/crash shutdown, cannot connect now, a statement timeout). */
const UNAVAILABLE_SQLSTATES = new Set(['57P01', '57P02', '57P03', '57014', '53300']);
const UNAVAILABLE_ERRNOS = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'ECONNABORTED',
]);
const UNAVAILABLE_MESSAGES = [
  /Connection terminated/i,
  /connection error and is not queryable/i,
  /Client was closed and is not queryable/i,
  /timeout exceeded when trying to connect/i,
  /Query read timeout/i,
  /Cannot use a pool after calling end/i,
];

/** Whether `err` says the database could not be reached (rather than that the statement was refused). */
export function isConnectionError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && (code.startsWith('08') || UNAVAILABLE_SQLSTATES.has(code) || UNAVAILABLE_ERRNOS.has(code))) return true;
  return UNAVAILABLE_MESSAGES.some((re) => re.test(err.message));
}

/** A connection failure as RegistryError E_STORAGE_UNAVAILABLE (the cause's message); anything else unchanged. */
export function mapError(err: unknown): unknown {
  if (err instanceof RegistryError) return err;
  if (isConnectionError(err)) {
    const e = new RegistryError('E_STORAGE_UNAVAILABLE', `the registry database is unavailable: ${(err as Error).message}`);
    (e as { cause?: unknown }).cause = err;
    return e;
  }
  if (err instanceof Error && (err as { code?: unknown }).code === '3D000') {
    const e = new RegistryError('E_NO_REGISTRY', `the registry database does not exist: ${err.message}`);
    (e as { cause?: unknown }).cause = err;
    return e;
  }
  return err;
}

/** `url` with its password shown as ***. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url.replace(/(\/\/[^:/@]+:)[^@]*@/, '$1***@');
  }
}

function sqlOf(query: (text: string, values: unknown[] | undefined) => Promise<pg.QueryResult>): Sql {
  const exec = async (sql: string, params?: Params): Promise<pg.QueryResult> => {
    try {
      return await query(sql, params === undefined ? undefined : [...params]);
    } catch (err) {
      throw mapError(err);
    }
  };
  return {
    async q<R extends object>(sql: string, params?: Params): Promise<R[]> {
      return (await exec(sql, params)).rows as R[];
    },
    async one<R extends object>(sql: string, params?: Params): Promise<R | undefined> {
      return (await exec(sql, params)).rows[0] as R | undefined;
    },
    async run(sql: string, params?: Params): Promise<number> {
      return (await exec(sql, params)).rowCount ?? 0;
    },
  };
}

/** Work each open transaction (by its Sql) runs just before COMMIT, in order (atCommit). */
const beforeCommit = new WeakMap<Sql, (() => Promise<void>)[]>();

/**
 * Runs `fn` at the end of the transaction of `sql` (a `tx` callback's Sql),
 * just before COMMIT, after every earlier registration; an error rolls the
 * transaction back. For work that takes a lock every writer contends for (the
 * audit chain's head): taken last, it is held shortest and never before
 * another lock of the transaction (no lock-order deadlock).
 */
export function atCommit(sql: Sql, fn: () => Promise<void>): void {
  const queue = beforeCommit.get(sql);
  if (!queue) throw new Error('atCommit: not inside a transaction');
  queue.push(fn);
}

/** The pool and its helpers: what every Pg* store is constructed with. */
export class PgDb implements Sql {
  readonly pool: pg.Pool;
  /** The URL without its password. */
  readonly location: string;
  readonly #sql: Sql;
  readonly #log: PgLog | undefined;

  constructor(url: string, options: PgPoolOptions = {}) {
    this.location = redactUrl(url);
    this.#log = options.log;
    this.pool = new pg.Pool({
      connectionString: url,
      max: options.max ?? 10,
      connectionTimeoutMillis: 10_000,
      statement_timeout: 30_000,
      query_timeout: 30_000,
      keepAlive: true,
      types,
    });
    // An idle connection cut (server restart, network): the pool drops it; never an uncaught 'error'.
    this.pool.on('error', (err) => this.#log?.warn('registry.db.error', { location: this.location, error: err.message }));
    this.#sql = sqlOf((text, values) => this.pool.query(text, values));
  }

  q<R extends object = Record<string, unknown>>(sql: string, params?: Params): Promise<R[]> {
    return this.#sql.q<R>(sql, params);
  }

  one<R extends object = Record<string, unknown>>(sql: string, params?: Params): Promise<R | undefined> {
    return this.#sql.one<R>(sql, params);
  }

  run(sql: string, params?: Params): Promise<number> {
    return this.#sql.run(sql, params);
  }

  /**
   * Runs `fn` on one pooled connection inside BEGIN ... COMMIT (READ COMMITTED;
   * decisions another machine could race take row locks or are single
   * conditional statements). Any error rolls back and is thrown (a lost
   * connection as E_STORAGE_UNAVAILABLE); the connection is released, and
   * destroyed when it broke.
   */
  async tx<T>(fn: (sql: Sql) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw mapError(err);
    }
    // A checked-out client has no pool listener: a cut while we hold it must not be an uncaught 'error'.
    let broken: Error | undefined;
    const onError = (err: Error): void => {
      broken = err;
      this.#log?.warn('registry.db.error', { location: this.location, error: err.message });
    };
    client.on('error', onError);
    const sql = sqlOf((text, values) => client.query(text, values));
    const queue: (() => Promise<void>)[] = [];
    beforeCommit.set(sql, queue);
    try {
      await sql.run('BEGIN');
      const result = await fn(sql);
      for (let next = queue.shift(); next; next = queue.shift()) await next();
      await sql.run('COMMIT');
      client.removeListener('error', onError);
      client.release();
      return result;
    } catch (err) {
      let destroy: Error | boolean = broken ?? isConnectionError(err);
      if (!destroy) {
        try {
          await client.query('ROLLBACK');
        } catch {
          destroy = true;
        }
      }
      client.removeListener('error', onError);
      client.release(destroy);
      throw mapError(err);
    }
  }

  /** Ends the pool (waits for checked-out connections to be released). */
  async end(): Promise<void> {
    await this.pool.end();
  }
}
