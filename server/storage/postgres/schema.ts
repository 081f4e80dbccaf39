/**
 * The PostgreSQL registry schema as forward-only numbered migrations, kept in
 * `schema_migrations(version, applied_at)`. Migration 1 is the whole final
 * SQLite schema (server/storage/sqlite/schema.ts after its migration 7) with the
 * same table and column names, so `registry migrate` copies table by table:
 * INTEGER -> bigint (ms epochs exceed int4), REAL -> double precision, JSON
 * text stays text (queries cast it ::jsonb), the 0/1 integer flags stay
 * integers, audit.id and releases.id are identities. Every text column is
 * COLLATE "C" (byte order, as SQLite's BINARY): ids sort and page the same
 * on both backends whatever the database's default collation.
 *
 * Each migration runs in its own transaction under a transaction-scoped
 * advisory lock, so several `serve` processes opening one database at once
 * migrate it once; a database newer than this program is refused (E_SCHEMA,
 * as the SQLite registry's user_version check).
 */
import { AUDIT_GENESIS, chainHash } from '../audit-chain.js';
import { RegistryError } from '../errors.js';
import type { PgDb, Sql } from './db.js';

/** pg_advisory_xact_lock key of the migrations ("prov" in ASCII). */
export const MIGRATION_LOCK = 0x70726f76;

export const PG_MIGRATIONS: readonly string[] = [
  // 1: the whole registry (SQLite migrations 1-7).
  `
  CREATE TABLE devices (
    id text COLLATE "C" PRIMARY KEY,
    user_id text COLLATE "C",
    state text COLLATE "C" NOT NULL CHECK (state IN ('registered', 'enrolling', 'provisioned', 'decommissioned')),
    next_seq bigint NOT NULL DEFAULT 1 CHECK (next_seq >= 1),
    origin text COLLATE "C" NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    enrolled_at bigint,
    confirmed_at bigint,
    decommissioned_at bigint,
    flagged_at bigint,
    flag text COLLATE "C",
    last_seen_at bigint,
    presence text COLLATE "C" CHECK (presence IN ('online', 'offline')),
    presence_session text COLLATE "C",
    presence_conn bigint,
    report_interval_s bigint,
    reported text COLLATE "C",
    reported_at bigint,
    last_report_jti text COLLATE "C",
    report_run bigint,
    report_n bigint,
    arch text COLLATE "C",
    agent_version text COLLATE "C"
  );
  CREATE INDEX devices_user ON devices (user_id);

  CREATE TABLE device_keys (
    device_id text COLLATE "C" NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    kid text COLLATE "C" NOT NULL,
    use text COLLATE "C" NOT NULL CHECK (use IN ('sig', 'enc')),
    jwk text COLLATE "C" NOT NULL,
    status text COLLATE "C" NOT NULL CHECK (status IN ('current', 'previous', 'retired')),
    added_at bigint NOT NULL,
    retired_at bigint,
    PRIMARY KEY (device_id, kid)
  );

  CREATE TABLE enrollment_tokens (
    hash text COLLATE "C" PRIMARY KEY,
    device_id text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    used_at bigint,
    used_by text COLLATE "C"
  );
  CREATE INDEX enrollment_tokens_device ON enrollment_tokens (device_id);

  CREATE TABLE commands (
    jti text COLLATE "C" PRIMARY KEY,
    device_id text COLLATE "C" NOT NULL,
    action text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    params_digest text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    encryption_kid text COLLATE "C" NOT NULL,
    sealed text COLLATE "C" NOT NULL,
    fanout_id text COLLATE "C",
    bind_user text COLLATE "C",
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    sent_at bigint,
    ack_status text COLLATE "C" CHECK (ack_status IN ('applied', 'rejected', 'failed', 'rolled_back')),
    ack_code text COLLATE "C",
    ack_detail text COLLATE "C",
    ack_jti text COLLATE "C",
    ack_result text COLLATE "C",
    acked_at bigint,
    voided_at bigint,
    release_sha256 text COLLATE "C",
    UNIQUE (device_id, seq)
  );
  CREATE INDEX commands_device ON commands (device_id, seq);
  CREATE INDEX commands_fanout ON commands (fanout_id);
  CREATE INDEX commands_release ON commands (release_sha256) WHERE release_sha256 IS NOT NULL;

  CREATE TABLE audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at bigint NOT NULL,
    event text COLLATE "C" NOT NULL,
    device_id text COLLATE "C",
    detail text COLLATE "C" NOT NULL
  );
  CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
  END
  $$;
  CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit FOR EACH ROW EXECUTE FUNCTION audit_append_only();
  CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit FOR EACH ROW EXECUTE FUNCTION audit_append_only();
  CREATE TRIGGER audit_append_only_truncate BEFORE TRUNCATE ON audit FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
  CREATE INDEX audit_device ON audit (device_id, id);
  CREATE INDEX audit_event ON audit (event, id);
  CREATE INDEX audit_at ON audit (at);
  CREATE INDEX audit_rollout ON audit ((COALESCE(detail::jsonb ->> 'rollout_id', detail::jsonb ->> 'fanout_id')));

  CREATE TABLE device_tags (
    device_id text COLLATE "C" NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    tag text COLLATE "C" NOT NULL,
    added_at bigint NOT NULL,
    PRIMARY KEY (device_id, tag)
  );
  CREATE INDEX device_tags_tag ON device_tags (tag);

  CREATE TABLE rollouts (
    id text COLLATE "C" PRIMARY KEY,
    created_at bigint NOT NULL,
    action text COLLATE "C" NOT NULL,
    params text COLLATE "C" NOT NULL,
    user_id text COLLATE "C",
    selector text COLLATE "C" NOT NULL,
    ttl_s bigint NOT NULL,
    deadline_at bigint NOT NULL,
    rate_per_min bigint,
    ramp_from bigint,
    ramp_factor double precision,
    abort_percent double precision,
    abort_min bigint NOT NULL,
    concurrency bigint NOT NULL,
    state text COLLATE "C" NOT NULL CHECK (state IN ('running', 'paused', 'aborted', 'cancelled', 'completed')),
    state_reason text COLLATE "C",
    updated_at bigint NOT NULL,
    finished_at bigint,
    planning integer NOT NULL DEFAULT 0,
    retry_of text COLLATE "C"
  );

  CREATE TABLE rollout_targets (
    rollout_id text COLLATE "C" NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    device_id text COLLATE "C" NOT NULL,
    state text COLLATE "C" NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'applied', 'rejected', 'failed', 'rolled_back', 'expired', 'cancelled', 'not sent')),
    jti text COLLATE "C",
    attempts bigint NOT NULL DEFAULT 0,
    code text COLLATE "C",
    sent_at bigint,
    updated_at bigint NOT NULL,
    next_at bigint,
    PRIMARY KEY (rollout_id, device_id)
  );
  CREATE INDEX rollout_targets_state ON rollout_targets (rollout_id, state);
  CREATE INDEX rollout_targets_device ON rollout_targets (device_id, state);
  CREATE INDEX rollout_targets_order ON rollout_targets (rollout_id, state, attempts, device_id);
  CREATE INDEX rollout_targets_jti ON rollout_targets (jti);

  CREATE TABLE leases (
    name text COLLATE "C" PRIMARY KEY,
    holder text COLLATE "C" NOT NULL,
    expires_at bigint NOT NULL,
    generation bigint NOT NULL DEFAULT 0
  );

  CREATE TABLE releases (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version text COLLATE "C" NOT NULL,
    arch text COLLATE "C" NOT NULL,
    bytes bigint NOT NULL,
    sha256 text COLLATE "C" NOT NULL,
    manifest text COLLATE "C" NOT NULL,
    dir text COLLATE "C" NOT NULL,
    added_at bigint NOT NULL,
    removed_at bigint
  );
  CREATE UNIQUE INDEX releases_live ON releases (version, arch) WHERE removed_at IS NULL;
  CREATE INDEX releases_sha ON releases (sha256);

  -- The files of DATA/releases/VERSION-ARCH/ (artifact <= 64 MiB), so that every machine sharing
  -- this registry can serve chunks: a serve without the directory writes it from here, verified.
  -- Not in SQLite (one machine); \`registry migrate\` fills it from the data directory.
  CREATE TABLE release_files (
    release_id bigint NOT NULL REFERENCES releases (id) ON DELETE CASCADE,
    name text COLLATE "C" NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (release_id, name)
  );
  -- Uncompressed out-of-line storage: the artifact is gzip already, and substring() reads it in slices.
  ALTER TABLE release_files ALTER COLUMN bytes SET STORAGE EXTERNAL;
  `,
  // 2: the audit hash chain (issue 25; SQLite migration 9). prev_hash and hash on each row; audit_head, one row:
  // the last row's id and hash. An append locks the head row (FOR UPDATE) in its transaction and takes its id
  // from it (last_id + 1): appends from every serve sharing the database are serialized and their ids commit in
  // chain order (an identity would hand out ids in start order, with gaps). The rows already there are chained
  // in id order by PG_MIGRATION_STEPS[2], with the update trigger disabled for that; then both columns are NOT NULL.
  `
  ALTER TABLE audit ADD COLUMN prev_hash text COLLATE "C";
  ALTER TABLE audit ADD COLUMN hash text COLLATE "C";
  ALTER TABLE audit ALTER COLUMN id DROP IDENTITY;
  CREATE TABLE audit_head (
    one integer PRIMARY KEY CHECK (one = 1),
    last_id bigint NOT NULL,
    hash text COLLATE "C" NOT NULL
  );
  `,
  // 3: operator accounts (SQLite migration 10): operators, their API tokens and console sessions.
  `
  CREATE TABLE operators (
    name text COLLATE "C" PRIMARY KEY,
    role text COLLATE "C" NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    password_hash text COLLATE "C" NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    disabled_at bigint
  );

  CREATE TABLE operator_tokens (
    hash text COLLATE "C" PRIMARY KEY,
    id text COLLATE "C" NOT NULL UNIQUE,
    operator text COLLATE "C" NOT NULL REFERENCES operators (name) ON DELETE CASCADE,
    label text COLLATE "C" NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint,
    last_used_at bigint,
    revoked_at bigint
  );
  CREATE INDEX operator_tokens_operator ON operator_tokens (operator);

  CREATE TABLE operator_sessions (
    hash text COLLATE "C" PRIMARY KEY,
    operator text COLLATE "C" NOT NULL REFERENCES operators (name) ON DELETE CASCADE,
    created_at bigint NOT NULL,
    last_seen_at bigint NOT NULL,
    idle_ms bigint NOT NULL CHECK (idle_ms > 0),
    expires_at bigint NOT NULL
  );
  CREATE INDEX operator_sessions_operator ON operator_sessions (operator);
  `,
  // 4: reserved for console-auth's migration (SQLite 11); a no-op here, replaced when both are merged.
  `SELECT 1`,
  // 5: the console's read models (SQLite migration 12): fleet page indexes, device_presence, enrollment token revocation.
  `
  CREATE INDEX devices_last_seen ON devices (last_seen_at);
  CREATE INDEX devices_version ON devices ((COALESCE(agent_version, reported::jsonb ->> 'agent_version')));
  CREATE INDEX devices_flagged ON devices (flagged_at) WHERE flagged_at IS NOT NULL;
  CREATE INDEX commands_device_created ON commands (device_id, created_at, seq);
  CREATE TABLE device_presence (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    device_id text COLLATE "C" NOT NULL,
    at bigint NOT NULL,
    presence text COLLATE "C" NOT NULL CHECK (presence IN ('online', 'offline')),
    reason text COLLATE "C" NOT NULL,
    session text COLLATE "C",
    conn bigint
  );
  CREATE INDEX device_presence_device ON device_presence (device_id, id);
  ALTER TABLE enrollment_tokens ADD COLUMN revoked_at bigint;
  `,
];

/** Rows per batch when PG_MIGRATION_STEPS[2] chains existing audit rows. */
const CHAIN_BATCH = 1000;

/** JavaScript run after a migration's SQL, in its transaction (keyed by the version the migration makes). */
export const PG_MIGRATION_STEPS: Readonly<Partial<Record<number, (sql: Sql) => Promise<void>>>> = {
  2: async (sql) => {
    await sql.run('ALTER TABLE audit DISABLE TRIGGER audit_append_only_update');
    let prev = AUDIT_GENESIS;
    let lastId = 0;
    for (;;) {
      const rows = await sql.q<{ id: number; at: number; event: string; device_id: string | null; detail: string }>(
        'SELECT id, at, event, device_id, detail FROM audit WHERE id > $1 ORDER BY id LIMIT $2',
        [lastId, CHAIN_BATCH],
      );
      for (const r of rows) {
        const hash = chainHash(prev, { id: r.id, at: r.at, event: r.event, deviceId: r.device_id, detail: JSON.parse(r.detail) as unknown });
        await sql.run('UPDATE audit SET prev_hash = $1, hash = $2 WHERE id = $3', [prev, hash, r.id]);
        prev = hash;
        lastId = r.id;
      }
      if (rows.length < CHAIN_BATCH) break;
    }
    await sql.run('INSERT INTO audit_head (one, last_id, hash) VALUES (1, $1, $2)', [lastId, prev]);
    await sql.run('ALTER TABLE audit ENABLE TRIGGER audit_append_only_update');
    await sql.run('ALTER TABLE audit ALTER COLUMN prev_hash SET NOT NULL, ALTER COLUMN hash SET NOT NULL');
  },
};

export const PG_SCHEMA_VERSION = PG_MIGRATIONS.length;

async function currentVersion(sql: Sql): Promise<number | undefined> {
  const exists = await sql.one<{ t: string | null }>("SELECT to_regclass('schema_migrations')::text AS t");
  if (!exists?.t) return undefined;
  const row = await sql.one<{ v: number | null }>('SELECT MAX(version) AS v FROM schema_migrations');
  return row?.v ?? 0;
}

/**
 * Applies the migrations the database lacks, each in its own transaction
 * holding MIGRATION_LOCK (a second process waits, then finds nothing to do).
 * Without `create`, a database with no registry schema is E_NO_REGISTRY.
 * Returns the schema version.
 */
export async function migratePostgres(db: PgDb, options: { create?: boolean; now?: () => number } = {}): Promise<number> {
  const now = options.now ?? Date.now;
  for (;;) {
    const done = await db.tx(async (sql) => {
      await sql.run('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      const current = await currentVersion(sql);
      if (current === undefined && !options.create) {
        throw new RegistryError(
          'E_NO_REGISTRY',
          `registry ${db.location} has no registry schema; create it with provision-server init (or registry migrate --to)`,
        );
      }
      const version = current ?? 0;
      if (version > PG_SCHEMA_VERSION) {
        throw new RegistryError('E_SCHEMA', `registry schema version ${version} is newer than this program's (${PG_SCHEMA_VERSION}); upgrade provision-server`);
      }
      if (version === PG_SCHEMA_VERSION) return true;
      if (current === undefined) await sql.run('CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at bigint NOT NULL)');
      await sql.run(PG_MIGRATIONS[version] as string);
      await PG_MIGRATION_STEPS[version + 1]?.(sql);
      await sql.run('INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)', [version + 1, now()]);
      return version + 1 === PG_SCHEMA_VERSION;
    });
    if (done) return PG_SCHEMA_VERSION;
  }
}
