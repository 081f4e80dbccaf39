/**
 * The registry's schema as an ordered list of migrations. `PRAGMA user_version`
 * holds how many have been applied; each runs in its own transaction.
 */
import type Database from 'better-sqlite3';
import { RegistryError } from '../errors.js';

export const MIGRATIONS: readonly string[] = [
  // 1: devices, their keys, enrollment tokens, commands, fan-outs and the audit log.
  `
  CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    user_id TEXT,
    state TEXT NOT NULL CHECK (state IN ('registered', 'enrolling', 'provisioned', 'decommissioned')),
    next_seq INTEGER NOT NULL DEFAULT 1 CHECK (next_seq >= 1),
    origin TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    enrolled_at INTEGER,
    confirmed_at INTEGER,
    decommissioned_at INTEGER
  ) STRICT;
  CREATE INDEX devices_user ON devices (user_id);

  CREATE TABLE device_keys (
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    kid TEXT NOT NULL,
    use TEXT NOT NULL CHECK (use IN ('sig', 'enc')),
    jwk TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('current', 'previous', 'retired')),
    added_at INTEGER NOT NULL,
    retired_at INTEGER,
    PRIMARY KEY (device_id, kid)
  ) STRICT;

  CREATE TABLE enrollment_tokens (
    hash TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    used_by TEXT
  ) STRICT;
  CREATE INDEX enrollment_tokens_device ON enrollment_tokens (device_id);

  CREATE TABLE commands (
    jti TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    action TEXT NOT NULL,
    user_id TEXT NOT NULL,
    params_digest TEXT NOT NULL,
    seq INTEGER NOT NULL,
    encryption_kid TEXT NOT NULL,
    sealed TEXT NOT NULL,
    fanout_id TEXT,
    -- the user the device is bound to once this command is applied (request; update with user_id)
    bind_user TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    sent_at INTEGER,
    ack_status TEXT CHECK (ack_status IN ('applied', 'rejected', 'failed')),
    ack_code TEXT,
    ack_detail TEXT,
    ack_jti TEXT,
    ack_result TEXT,
    acked_at INTEGER,
    UNIQUE (device_id, seq)
  ) STRICT;
  CREATE INDEX commands_device ON commands (device_id, seq);
  CREATE INDEX commands_fanout ON commands (fanout_id);

  CREATE TABLE fanouts (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    action TEXT NOT NULL,
    params TEXT NOT NULL,
    selector TEXT NOT NULL,
    devices TEXT NOT NULL
  ) STRICT;

  CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    device_id TEXT,
    detail TEXT NOT NULL
  ) STRICT;
  CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
  CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
  `,
  // 2: a security flag on a device (set when an authenticated ack contradicts the recorded
  // outcome of a command: the registry no longer knows what the device holds; cleared when
  // the device is enrolled again or its keys are replaced). `flag` is JSON (event, jti, ...).
  `
  ALTER TABLE devices ADD COLUMN flagged_at INTEGER;
  ALTER TABLE devices ADD COLUMN flag TEXT;
  `,
  // 3: presence and reported state (from the device's signed reports), tags, rollouts
  // (one action to many devices at a rate, with a delivery deadline and an abort rule,
  // driven by one engine at a time: the lease), and each rollout's targets.
  `
  ALTER TABLE devices ADD COLUMN last_seen_at INTEGER;
  ALTER TABLE devices ADD COLUMN presence TEXT CHECK (presence IN ('online', 'offline'));
  ALTER TABLE devices ADD COLUMN presence_session TEXT;
  ALTER TABLE devices ADD COLUMN presence_conn INTEGER;
  ALTER TABLE devices ADD COLUMN report_interval_s INTEGER;
  ALTER TABLE devices ADD COLUMN reported TEXT;
  ALTER TABLE devices ADD COLUMN reported_at INTEGER;
  ALTER TABLE devices ADD COLUMN last_report_jti TEXT;

  CREATE TABLE device_tags (
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, tag)
  ) STRICT;
  CREATE INDEX device_tags_tag ON device_tags (tag);

  CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    action TEXT NOT NULL,
    params TEXT NOT NULL,
    user_id TEXT,
    selector TEXT NOT NULL,
    ttl_s INTEGER NOT NULL,
    deadline_at INTEGER NOT NULL,
    rate_per_min INTEGER,
    ramp_from INTEGER,
    ramp_factor REAL,
    abort_percent REAL,
    abort_min INTEGER NOT NULL,
    concurrency INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'paused', 'aborted', 'cancelled', 'completed')),
    state_reason TEXT,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER
  ) STRICT;

  CREATE TABLE rollout_targets (
    rollout_id TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    device_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'applied', 'rejected', 'failed', 'expired', 'cancelled', 'not sent')),
    jti TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    code TEXT,
    sent_at INTEGER,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
  ) STRICT;
  CREATE INDEX rollout_targets_state ON rollout_targets (rollout_id, state);
  CREATE INDEX rollout_targets_device ON rollout_targets (device_id, state);

  CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL
  ) STRICT;
  `,
  // 4: fencing and re-send limits for rollouts. A lease's generation (fencing token) grows
  // each time the lease is taken by a holder that did not hold it live: every claim and
  // every mark-sent of a rollout target checks holder and generation in its transaction.
  // A target's next_at: not sent to before then (the backoff after an E_EXPIRED answer).
  // A command's voided_at: sealed and recorded but never published (its sender lost the
  // lease, or the target was taken from it); nothing re-publishes it.
  // A rollout's planning: 1 while its targets are being recorded (in chunks): not driven yet.
  // The order index lets the engine pick the next deliverable targets without sorting them all.
  `
  ALTER TABLE leases ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE rollouts ADD COLUMN planning INTEGER NOT NULL DEFAULT 0;
  CREATE INDEX rollout_targets_order ON rollout_targets (rollout_id, state, attempts, device_id);
  ALTER TABLE rollout_targets ADD COLUMN next_at INTEGER;
  ALTER TABLE commands ADD COLUMN voided_at INTEGER;
  CREATE INDEX rollout_targets_jti ON rollout_targets (jti);
  `,
  // 5: the position (run, conn, n: protocol/report.ts) of the newest report accepted from each
  // device: a report not newer than it changes nothing (a replay). NULL: none yet (or only
  // legacy reports without a position). presence_conn holds the conn of that position.
  `
  ALTER TABLE devices ADD COLUMN report_run INTEGER;
  ALTER TABLE devices ADD COLUMN report_n INTEGER;
  `,
  // 6: reading the audit log by device, event, rollout and time (provision-server audit, GET /audit),
  // and a rollout's origin when it retries the targets of another (rollout retry).
  `
  CREATE INDEX audit_device ON audit (device_id, id);
  CREATE INDEX audit_event ON audit (event, id);
  CREATE INDEX audit_at ON audit (at);
  CREATE INDEX audit_rollout ON audit (COALESCE(json_extract(detail, '$.rollout_id'), json_extract(detail, '$.fanout_id')));
  ALTER TABLE rollouts ADD COLUMN retry_of TEXT;
  `,
  // 7: agent upgrades (issue 22). Releases (the artifact and chunk index live under DATA/releases/VERSION-ARCH/;
  // `manifest` is the signed manifest, a compact JWS); at most one live release per version and arch (a removed
  // one stays, with removed_at, for the audit). Each device's architecture (recorded by `send ... upgrade --arch`
  // or an applied upgrade, read from reports that carry one) and running agent version (its reports' agent_version,
  // or an applied upgrade's result.version). An upgrade command's artifact (release_sha256: the chunk server serves
  // that artifact to that device only while the command is in flight). Acks may say `rolled_back`, and so may
  // rollout targets: the CHECK constraints change, so both tables are rebuilt (SQLite cannot alter a CHECK).
  `
  CREATE TABLE releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT NOT NULL,
    arch TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    manifest TEXT NOT NULL,
    dir TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    removed_at INTEGER
  ) STRICT;
  CREATE UNIQUE INDEX releases_live ON releases (version, arch) WHERE removed_at IS NULL;
  CREATE INDEX releases_sha ON releases (sha256);

  ALTER TABLE devices ADD COLUMN arch TEXT;
  ALTER TABLE devices ADD COLUMN agent_version TEXT;

  CREATE TABLE commands_v7 (
    jti TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    action TEXT NOT NULL,
    user_id TEXT NOT NULL,
    params_digest TEXT NOT NULL,
    seq INTEGER NOT NULL,
    encryption_kid TEXT NOT NULL,
    sealed TEXT NOT NULL,
    fanout_id TEXT,
    bind_user TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    sent_at INTEGER,
    ack_status TEXT CHECK (ack_status IN ('applied', 'rejected', 'failed', 'rolled_back')),
    ack_code TEXT,
    ack_detail TEXT,
    ack_jti TEXT,
    ack_result TEXT,
    acked_at INTEGER,
    voided_at INTEGER,
    release_sha256 TEXT,
    UNIQUE (device_id, seq)
  ) STRICT;
  INSERT INTO commands_v7 (jti, device_id, action, user_id, params_digest, seq, encryption_kid, sealed, fanout_id, bind_user, created_at,
      expires_at, sent_at, ack_status, ack_code, ack_detail, ack_jti, ack_result, acked_at, voided_at)
    SELECT jti, device_id, action, user_id, params_digest, seq, encryption_kid, sealed, fanout_id, bind_user, created_at,
      expires_at, sent_at, ack_status, ack_code, ack_detail, ack_jti, ack_result, acked_at, voided_at FROM commands;
  DROP TABLE commands;
  ALTER TABLE commands_v7 RENAME TO commands;
  CREATE INDEX commands_device ON commands (device_id, seq);
  CREATE INDEX commands_fanout ON commands (fanout_id);
  CREATE INDEX commands_release ON commands (release_sha256) WHERE release_sha256 IS NOT NULL;

  CREATE TABLE rollout_targets_v7 (
    rollout_id TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    device_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'applied', 'rejected', 'failed', 'rolled_back', 'expired', 'cancelled', 'not sent')),
    jti TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    code TEXT,
    sent_at INTEGER,
    updated_at INTEGER NOT NULL,
    next_at INTEGER,
    PRIMARY KEY (rollout_id, device_id)
  ) STRICT;
  INSERT INTO rollout_targets_v7 (rollout_id, device_id, state, jti, attempts, code, sent_at, updated_at, next_at)
    SELECT rollout_id, device_id, state, jti, attempts, code, sent_at, updated_at, next_at FROM rollout_targets;
  DROP TABLE rollout_targets;
  ALTER TABLE rollout_targets_v7 RENAME TO rollout_targets;
  CREATE INDEX rollout_targets_state ON rollout_targets (rollout_id, state);
  CREATE INDEX rollout_targets_device ON rollout_targets (device_id, state);
  CREATE INDEX rollout_targets_order ON rollout_targets (rollout_id, state, attempts, device_id);
  CREATE INDEX rollout_targets_jti ON rollout_targets (jti);
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** Applies the migrations the database lacks; refuses a database newer than this program. */
export function migrate(db: Database.Database): number {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > SCHEMA_VERSION) {
    throw new RegistryError('E_SCHEMA', `registry schema version ${current} is newer than this program's (${SCHEMA_VERSION}); upgrade provision-server`);
  }
  for (let v = current; v < SCHEMA_VERSION; v++) {
    const sql = MIGRATIONS[v] as string;
    db.transaction(() => {
      db.exec(sql);
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
  return SCHEMA_VERSION;
}
