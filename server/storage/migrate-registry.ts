/**
 * Copies a SQLite registry into an empty PostgreSQL registry and proves the
 * copy: `provision-server registry migrate --to postgres://...` (the CLI is
 * server/commands/registry-migrate.ts).
 *
 * - The SQLite file is opened read-only (one read transaction: a consistent
 *   snapshot) and never written; its schema version must be this program's.
 * - The PostgreSQL schema is created (or brought up to date) first; a target
 *   holding any registry row is refused (E_MIGRATE_NOT_EMPTY) before anything
 *   is written.
 * - Every table is copied in dependency order inside ONE PostgreSQL
 *   transaction, streamed (better-sqlite3 `.iterate()`) in multi-row INSERTs
 *   of BATCH_ROWS rows, never all rows in memory. releases.id keeps its
 *   values (OVERRIDING SYSTEM VALUE) and its identity is set to continue after
 *   them (after SQLite's AUTOINCREMENT high-water mark). audit rows keep their
 *   ids and chain hashes; the audit chain's head (audit_head, made by the
 *   schema) is set to SQLite's, so appends continue the same chain.
 * - Leases are not copied: an engine takes a new one on the new registry.
 * - Before COMMIT, each table is verified: the row count and a SHA-256 digest
 *   over its rows in primary-key order (tableDigest below), computed the same
 *   way from both databases. Any difference throws E_MIGRATE_VERIFY naming the
 *   table and the transaction rolls back: nothing is left half-copied.
 * - The files of every live release (DATA/releases/VERSION-ARCH/: artifact,
 *   chunk index, manifests) are loaded into release_files in the same
 *   transaction, so that every serve sharing the new registry can serve
 *   chunks. Each release's files are checked before they are written (the
 *   artifact's size and SHA-256 are the row's, the index its chunks'), and
 *   read back from PostgreSQL as SHA-256 sums; a live release whose files are
 *   missing or differ throws E_MIGRATE_VERIFY (remove it, or put its files back).
 */
import Database from 'better-sqlite3';
import { createHash, type Hash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { RegistryError } from './errors.js';
import { SCHEMA_VERSION } from './sqlite/schema.js';
import { PgDb, type PgLog, type Sql } from './postgres/db.js';
import { migratePostgres } from './postgres/schema.js';
import { insertFiles } from './postgres/releases.js';
import { verifyReleaseFiles } from '../releases/materialise.js';
import { ARTIFACT_FILE, readReleaseFiles, releaseDirOf } from '../releases/store.js';
import { releaseRecord, type ReleaseRow } from './rows.js';

/** A copied table: its name, primary key (the digest's row order) and identity column, if any. */
export interface MigratedTable {
  readonly name: string;
  readonly key: readonly string[];
  readonly identity?: string;
}

/** The tables copied, parents before children (foreign keys). `leases` is deliberately absent. */
export const MIGRATED_TABLES: readonly MigratedTable[] = [
  { name: 'devices', key: ['id'] },
  { name: 'device_keys', key: ['device_id', 'kid'] },
  { name: 'device_tags', key: ['device_id', 'tag'] },
  { name: 'enrollment_tokens', key: ['hash'] },
  { name: 'releases', key: ['id'], identity: 'id' },
  { name: 'commands', key: ['jti'] },
  { name: 'rollouts', key: ['id'] },
  { name: 'rollout_targets', key: ['rollout_id', 'device_id'] },
  { name: 'audit', key: ['id'] },
  { name: 'operators', key: ['name'] },
  { name: 'operator_tokens', key: ['hash'] },
  { name: 'operator_sessions', key: ['hash'] },
  { name: 'device_presence', key: ['id'], identity: 'id' },
];

/** Tables of the SQLite registry that are not copied, on purpose. */
export const NOT_MIGRATED_TABLES: readonly string[] = ['leases'];

/** Tables not copied row by row but set after the copy: the audit chain's head (its one row is made by the PostgreSQL schema). */
const SET_AFTER_COPY: readonly string[] = ['audit_head'];

/** Rows per INSERT (and per cursor FETCH when verifying). */
export const BATCH_ROWS = 500;

export interface TableResult {
  table: string;
  rows: number;
  /** SHA-256 (hex) over the table's rows in primary-key order: the same from both databases. */
  digest: string;
}

export interface MigrateResult {
  /** The SQLite file copied (absolute as given). */
  from: string;
  /** The PostgreSQL URL, password shown as ***. */
  to: string;
  /** The registry schema version both sides have. */
  schemaVersion: number;
  tables: TableResult[];
  /** The live releases' files loaded into release_files (rows: files; digest over release id, name, size, SHA-256 of each). */
  releaseFiles: { releases: number; files: number; bytes: number; digest: string };
  /** Tables left behind on purpose, and why. */
  skipped: { table: string; rows: number; reason: string }[];
}

export interface MigrateProgress {
  /** Copying the table's rows, or reading them back from PostgreSQL to verify them. */
  phase: 'copy' | 'verify';
  table: string;
  copied: number;
  total: number;
}

export interface MigrateOptions {
  /** Where the PostgreSQL pool logs a dropped idle connection. */
  log?: PgLog;
  /** Called after each batch written (and each batch read back). */
  onProgress?: (p: MigrateProgress) => void;
  /** The data directory whose DATA/releases/VERSION-ARCH/ hold the live releases' files (default: the directory each row names). */
  dataDir?: string;
}

type SqlValue = string | number | null;

/**
 * One row as the digest sees it: the JSON array of its values in the table's
 * column order. Numbers stay numbers (integers and REALs alike: both sides hand
 * them to us as JS numbers), text stays text, NULL is null.
 */
function canonicalRow(table: string, row: readonly unknown[]): string {
  const values: SqlValue[] = row.map((v) => {
    if (v === null || v === undefined) return null;
    if (typeof v === 'number' || typeof v === 'string') return v;
    if (typeof v === 'bigint') return Number(v);
    throw new RegistryError('E_MIGRATE_COPY', `table ${table}: a value of type ${typeof v} cannot be compared (the registry has only text and numbers)`);
  });
  return JSON.stringify(values);
}

/** A running digest of one table. */
class TableDigest {
  readonly #hash: Hash = createHash('sha256');
  rows = 0;
  constructor(readonly table: string) {}
  add(row: readonly unknown[]): void {
    this.#hash.update(canonicalRow(this.table, row));
    this.#hash.update('\n');
    this.rows++;
  }
  result(): TableResult {
    return { table: this.table, rows: this.rows, digest: this.#hash.digest('hex') };
  }
}

const ident = (name: string): string => `"${name.replace(/"/g, '""')}"`;

/** Opens the SQLite registry read-only and checks its schema version. */
export function openSqliteReadOnly(path: string): Database.Database {
  if (!existsSync(path))
    throw new RegistryError('E_NO_REGISTRY', `registry ${path} does not exist (give the data directory with --data, or the file with --from)`);
  let db: Database.Database;
  try {
    db = new Database(path, { readonly: true, fileMustExist: true });
  } catch (err) {
    throw new RegistryError('E_NO_REGISTRY', `registry ${path} cannot be opened: ${(err as Error).message}`);
  }
  try {
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version !== SCHEMA_VERSION) {
      throw new RegistryError(
        'E_REGISTRY_VERSION',
        version < SCHEMA_VERSION
          ? `registry ${path} has schema version ${version}, this program ${SCHEMA_VERSION}: open it once with this version first (e.g. provision-server device list --data DIR), then migrate`
          : `registry ${path} has schema version ${version}, newer than this program's (${SCHEMA_VERSION}): migrate with the provision-server that wrote it`,
      );
    }
    return db;
  } catch (err) {
    db.close();
    if (err instanceof RegistryError) throw err;
    throw new RegistryError('E_NO_REGISTRY', `registry ${path} is not a SQLite registry: ${(err as Error).message}`);
  }
}

/** A table's columns in SQLite's order (the digest's column order); checks PostgreSQL has the same ones. */
function columnsOf(sqlite: Database.Database, table: string): string[] {
  const cols = (sqlite.prepare(`SELECT name FROM pragma_table_info(?) ORDER BY cid`).all(table) as { name: string }[]).map((c) => c.name);
  if (cols.length === 0) throw new RegistryError('E_MIGRATE_COPY', `the SQLite registry has no table ${table}`);
  return cols;
}

async function checkPgColumns(sql: Sql, table: string, columns: readonly string[]): Promise<void> {
  const rows = await sql.q<{ column_name: string }>(
    'SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1',
    [table],
  );
  const pg = new Set(rows.map((r) => r.column_name));
  const missing = columns.filter((c) => !pg.has(c));
  const extra = [...pg].filter((c) => !columns.includes(c));
  if (missing.length > 0 || extra.length > 0) {
    throw new RegistryError(
      'E_MIGRATE_COPY',
      `table ${table} differs between SQLite and PostgreSQL (${[missing.length ? `missing in PostgreSQL: ${missing.join(', ')}` : '', extra.length ? `only in PostgreSQL: ${extra.join(', ')}` : ''].filter(Boolean).join('; ')})`,
    );
  }
}

/** Every table of the SQLite registry is either copied or deliberately left: anything else would be lost silently. */
function checkSqliteTables(sqlite: Database.Database): void {
  const known = new Set([...MIGRATED_TABLES.map((t) => t.name), ...NOT_MIGRATED_TABLES, ...SET_AFTER_COPY]);
  const names = (sqlite.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").all() as { name: string }[]).map(
    (r) => r.name,
  );
  const unknown = names.filter((n) => !known.has(n));
  if (unknown.length > 0)
    throw new RegistryError('E_MIGRATE_COPY', `the SQLite registry has tables this program does not know how to copy: ${unknown.join(', ')}`);
}

function sqliteSelect(table: MigratedTable, columns: readonly string[]): string {
  return `SELECT ${columns.map(ident).join(', ')} FROM ${ident(table.name)} ORDER BY ${table.key.map(ident).join(', ')}`;
}

/** PostgreSQL's order matching SQLite's BINARY collation (bytes of UTF-8): COLLATE "C" on text keys. */
async function pgSelect(sql: Sql, table: MigratedTable, columns: readonly string[]): Promise<string> {
  const types = await sql.q<{ column_name: string; data_type: string }>(
    'SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1',
    [table.name],
  );
  const isText = new Map(types.map((t) => [t.column_name, t.data_type === 'text' || t.data_type === 'character varying']));
  const order = table.key.map((k) => (isText.get(k) ? `${ident(k)} COLLATE "C"` : ident(k))).join(', ');
  return `SELECT ${columns.map(ident).join(', ')} FROM ${ident(table.name)} ORDER BY ${order}`;
}

/** The digest of one table as read from SQLite. */
export function sqliteTableDigest(sqlite: Database.Database, table: MigratedTable): TableResult {
  const columns = columnsOf(sqlite, table.name);
  const digest = new TableDigest(table.name);
  for (const row of sqlite.prepare(sqliteSelect(table, columns)).raw(true).iterate() as IterableIterator<unknown[]>) digest.add(row);
  return digest.result();
}

let cursors = 0;

/** The digest of one table as read from PostgreSQL (a cursor: batches, never the whole table). Needs a transaction. */
export async function pgTableDigest(
  sql: Sql,
  table: MigratedTable,
  columns: readonly string[],
  onProgress?: (p: MigrateProgress) => void,
  total = 0,
): Promise<TableResult> {
  const name = `migrate_verify_${++cursors}`;
  await sql.run(`DECLARE ${name} NO SCROLL CURSOR FOR ${await pgSelect(sql, table, columns)}`);
  const digest = new TableDigest(table.name);
  try {
    for (;;) {
      const rows = await sql.q<Record<string, unknown>>(`FETCH FORWARD ${BATCH_ROWS * 4} FROM ${name}`);
      for (const r of rows) digest.add(columns.map((c) => r[c]));
      onProgress?.({ phase: 'verify', table: table.name, copied: digest.rows, total });
      if (rows.length < BATCH_ROWS * 4) break;
    }
  } finally {
    await sql.run(`CLOSE ${name}`);
  }
  return digest.result();
}

function compare(expected: TableResult, actual: TableResult): void {
  if (expected.rows !== actual.rows) {
    throw new RegistryError('E_MIGRATE_VERIFY', `table ${expected.table}: ${expected.rows} rows in SQLite, ${actual.rows} in PostgreSQL`);
  }
  if (expected.digest !== actual.digest) {
    throw new RegistryError(
      'E_MIGRATE_VERIFY',
      `table ${expected.table}: the rows differ (digest ${expected.digest.slice(0, 12)} in SQLite, ${actual.digest.slice(0, 12)} in PostgreSQL)`,
    );
  }
}

async function copyTable(
  sqlite: Database.Database,
  sql: Sql,
  table: MigratedTable,
  columns: readonly string[],
  onProgress?: (p: MigrateProgress) => void,
): Promise<TableResult> {
  const total = (sqlite.prepare(`SELECT COUNT(*) AS n FROM ${ident(table.name)}`).get() as { n: number }).n;
  const digest = new TableDigest(table.name);
  const head = `INSERT INTO ${ident(table.name)} (${columns.map(ident).join(', ')})${table.identity ? ' OVERRIDING SYSTEM VALUE' : ''} VALUES `;
  let batch: unknown[] = [];
  let rows = 0;
  const flush = async (): Promise<void> => {
    if (rows === 0) return;
    const tuples: string[] = [];
    for (let r = 0; r < rows; r++) tuples.push(`(${columns.map((_, c) => `$${r * columns.length + c + 1}`).join(', ')})`);
    try {
      await sql.run(head + tuples.join(', '), batch);
    } catch (err) {
      if (err instanceof RegistryError) throw err;
      throw new RegistryError('E_MIGRATE_COPY', `copying table ${table.name} failed (nothing was kept): ${(err as Error).message}`);
    }
    batch = [];
    rows = 0;
    onProgress?.({ phase: 'copy', table: table.name, copied: digest.rows, total });
  };
  for (const row of sqlite.prepare(sqliteSelect(table, columns)).raw(true).iterate() as IterableIterator<unknown[]>) {
    digest.add(row);
    for (const v of row) batch.push(typeof v === 'bigint' ? v.toString() : v);
    if (++rows === BATCH_ROWS) await flush();
  }
  await flush();
  if (digest.rows !== total) throw new RegistryError('E_MIGRATE_VERIFY', `table ${table.name}: counted ${total} rows in SQLite but read ${digest.rows}`);
  if (table.identity) {
    // Next id: after the largest copied, and after SQLite's AUTOINCREMENT high-water mark (ids are never reused).
    const seq = sqlite.prepare('SELECT seq FROM sqlite_sequence WHERE name = ?').get(table.name) as { seq: number } | undefined;
    const max = await sql.one<{ m: number | null }>(`SELECT MAX(${ident(table.identity)}) AS m FROM ${ident(table.name)}`);
    const next = Math.max(seq?.seq ?? 0, max?.m ?? 0) + 1;
    await sql.run(`SELECT setval(pg_get_serial_sequence($1, $2), $3, false)`, [table.name, table.identity, next]);
  }
  return digest.result();
}

/** The copied tables that already hold a row in PostgreSQL. */
async function rowsPresent(sql: Sql): Promise<string[]> {
  const present: string[] = [];
  for (const t of MIGRATED_TABLES) {
    if (await sql.one(`SELECT 1 FROM ${ident(t.name)} LIMIT 1`)) present.push(t.name);
  }
  return present;
}

/**
 * Checks PostgreSQL against the SQLite registry, table by table (counts and
 * digests; `sqlite` should be in a read transaction for a stable snapshot).
 * Throws E_MIGRATE_VERIFY naming the first table that differs.
 */
export async function verifyTables(
  sqlite: Database.Database,
  sql: Sql,
  expected?: ReadonlyMap<string, TableResult>,
  onProgress?: (p: MigrateProgress) => void,
): Promise<TableResult[]> {
  const out: TableResult[] = [];
  for (const table of MIGRATED_TABLES) {
    const columns = columnsOf(sqlite, table.name);
    await checkPgColumns(sql, table.name, columns);
    const want = expected?.get(table.name) ?? sqliteTableDigest(sqlite, table);
    const got = await pgTableDigest(sql, table, columns, onProgress, want.rows);
    compare(want, got);
    out.push(got);
  }
  return out;
}

/** Opens both registries and verifies that PostgreSQL holds what the SQLite file holds (read only on both sides). */
export async function verifyRegistryCopy(sqlitePath: string, pgUrl: string, options: { log?: PgLog } = {}): Promise<TableResult[]> {
  const sqlite = openSqliteReadOnly(sqlitePath);
  const pg = new PgDb(pgUrl, { max: 1, ...(options.log ? { log: options.log } : {}) });
  try {
    sqlite.exec('BEGIN');
    return await pg.tx(async (sql) => {
      await sql.run('SET TRANSACTION READ ONLY');
      return verifyTables(sqlite, sql);
    });
  } finally {
    if (sqlite.inTransaction) sqlite.exec('COMMIT');
    sqlite.close();
    await pg.end();
  }
}

/**
 * Copies the SQLite registry at `sqlitePath` into the (empty) PostgreSQL
 * registry at `pgUrl` and verifies the copy before committing it.
 */
export async function migrateRegistry(sqlitePath: string, pgUrl: string, options: MigrateOptions = {}): Promise<MigrateResult> {
  const sqlite = openSqliteReadOnly(sqlitePath);
  let pg: PgDb | undefined;
  try {
    checkSqliteTables(sqlite);
    // One read transaction: every table (and the verification) sees the same snapshot even if a serve still writes.
    sqlite.exec('BEGIN');
    const columns = new Map(MIGRATED_TABLES.map((t) => [t.name, columnsOf(sqlite, t.name)]));
    const skipped = NOT_MIGRATED_TABLES.map((table) => ({
      table,
      rows: (sqlite.prepare(`SELECT COUNT(*) AS n FROM ${ident(table)}`).get() as { n: number }).n,
      reason: 'engine leases: the first serve on the new registry takes a new one',
    }));

    pg = new PgDb(pgUrl, { max: 1, ...(options.log ? { log: options.log } : {}) });
    await migratePostgres(pg, { create: true });
    const tables = await pg.tx(async (sql) => {
      // No other writer while we copy (readers may go on); then refuse a registry already in use.
      await sql.run(`LOCK TABLE ${MIGRATED_TABLES.map((t) => ident(t.name)).join(', ')} IN EXCLUSIVE MODE`);
      const present = await rowsPresent(sql);
      if (present.length > 0) {
        throw new RegistryError(
          'E_MIGRATE_NOT_EMPTY',
          `registry ${pg?.location ?? ''} already holds data (in ${present.join(', ')}): migrate only into an empty database; nothing was written`,
        );
      }
      for (const table of MIGRATED_TABLES) await checkPgColumns(sql, table.name, columns.get(table.name) as string[]);
      const copied = new Map<string, TableResult>();
      for (const table of MIGRATED_TABLES) copied.set(table.name, await copyTable(sqlite, sql, table, columns.get(table.name) as string[], options.onProgress));
      // The audit chain continues where SQLite's ends (the head row exists: made by the schema, at genesis).
      const head = sqlite.prepare('SELECT last_id, hash FROM audit_head WHERE one = 1').get() as { last_id: number; hash: string } | undefined;
      if (head) await sql.run('UPDATE audit_head SET last_id = $1, hash = $2 WHERE one = 1', [head.last_id, head.hash]);
      const verified = await verifyTables(sqlite, sql, copied, options.onProgress);
      return { verified, releaseFiles: await copyReleaseFiles(sqlite, sql, options.dataDir) };
    });
    return { from: sqlitePath, to: pg.location, schemaVersion: SCHEMA_VERSION, tables: tables.verified, releaseFiles: tables.releaseFiles, skipped };
  } finally {
    if (sqlite.inTransaction) sqlite.exec('COMMIT');
    sqlite.close();
    await pg?.end();
  }
}

/** A live release's row (removed_at IS NULL, not read). */
type LiveReleaseRow = Omit<ReleaseRow, 'removed_at'>;

/** Where a live release's files are on this machine: DATA/releases/VERSION-ARCH when `dataDir` has them, else the row's dir. */
function releaseFilesDir(row: LiveReleaseRow, dataDir: string | undefined): string {
  if (dataDir !== undefined) {
    const here = releaseDirOf(dataDir, row);
    if (existsSync(join(here, ARTIFACT_FILE))) return here;
  }
  return row.dir;
}

/**
 * Loads the files of every live release of the SQLite registry into
 * release_files (inside the migration's transaction), checked against the
 * release's row before, and read back as SHA-256 sums after.
 */
async function copyReleaseFiles(sqlite: Database.Database, sql: Sql, dataDir: string | undefined): Promise<MigrateResult['releaseFiles']> {
  const rows = sqlite
    .prepare('SELECT id, version, arch, bytes, sha256, manifest, dir, added_at FROM releases WHERE removed_at IS NULL ORDER BY id')
    .all() as LiveReleaseRow[];
  const expected = new Map<string, { size: number; sha256: string }>();
  for (const row of rows) {
    const record = releaseRecord({ ...row, removed_at: null });
    const dir = releaseFilesDir(row, dataDir);
    const what = `release ${row.version} (${row.arch})`;
    let files;
    try {
      files = await readReleaseFiles(dir);
      verifyReleaseFiles(record, files);
    } catch (err) {
      throw new RegistryError(
        'E_MIGRATE_VERIFY',
        `${what}: its files in ${dir} cannot be copied (${err instanceof Error ? err.message : String(err)}); put them back or remove the release (provision-server release remove), then migrate again`,
      );
    }
    for (const f of files) expected.set(`${row.id}/${f.name}`, { size: f.bytes.length, sha256: createHash('sha256').update(f.bytes).digest('hex') });
    await insertFiles(sql, row.id, files);
  }
  const stored = await sql.q<{ release_id: number; name: string; size: number; sha: string }>(
    `SELECT release_id, name, octet_length(bytes) AS size, encode(sha256(bytes), 'hex') AS sha FROM release_files ORDER BY release_id, name COLLATE "C"`,
  );
  const digest = new TableDigest('release_files');
  let bytes = 0;
  for (const f of stored) {
    const want = expected.get(`${f.release_id}/${f.name}`);
    if (!want || want.size !== f.size || want.sha256 !== f.sha)
      throw new RegistryError('E_MIGRATE_VERIFY', `release_files: ${f.name} of release id ${f.release_id} differs in PostgreSQL from the file copied`);
    digest.add([f.release_id, f.name, f.size, f.sha]);
    bytes += f.size;
  }
  if (stored.length !== expected.size)
    throw new RegistryError('E_MIGRATE_VERIFY', `release_files: ${expected.size} files copied, ${stored.length} in PostgreSQL`);
  const artifacts = stored.filter((f) => f.name === ARTIFACT_FILE);
  for (const a of artifacts) {
    const row = rows.find((r) => r.id === a.release_id);
    if (row?.sha256 !== a.sha)
      throw new RegistryError('E_MIGRATE_VERIFY', `release_files: the artifact of release id ${a.release_id} does not have its row's SHA-256`);
  }
  const d = digest.result();
  return { releases: rows.length, files: stored.length, bytes, digest: d.digest };
}
