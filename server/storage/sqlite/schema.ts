/**
 * The registry's schema as an ordered list of migrations. `PRAGMA user_version`
 * holds how many have been applied; each runs in its own transaction.
 */
import type Database from 'better-sqlite3';
import { AUDIT_GENESIS, chainHash } from '../audit-chain.js';
import { RegistryError } from '../errors.js';

export const MIGRATIONS: readonly string[] = [
  // 1: devices, their keys, enrollment tokens, commands, fan-outs (folded into rollouts by 8) and the audit log.
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
  // 8: the legacy fan-out (send --all/--user before rollouts, resumed with send --resume) folds into
  // rollouts. Each fanouts row becomes a rollouts row with the same id (its commands already carry it as
  // fanout_id, as a rollout's do): its action, params and selector ({all:true} or {userId}), no user_id
  // (each device's user, as the fan-out sent), ttl_s the default command lifetime (300 s), concurrency the
  // fan-out's default (32), no rate and no abort rule (abort_min 10), deadline 30 days after the migration
  // (the longest --deliver-within: past it a paused rollout completes with what is left `expired`).
  // A target per device of the fan-out (its list, duplicates once), from that device's commands of it:
  // - answered (the newest answer): the ack's status (applied, rejected, failed, rolled_back), code and jti;
  // - else the newest command unanswered, not void and still valid: `sent` with its jti (its answer
  //   settles it, as any rollout's);
  // - else unanswered and past its lifetime: `pending`, code E_TIMEOUT (no answer): resumed, it gets a
  //   fresh command, as send --resume sealed anew for it;
  // - else (no command: the fan-out never reached it): `pending`.
  // attempts: the commands the fan-out sealed for it. The rollout is `completed` (finished now) when no
  // target is pending or sent, else `paused`: nothing is sent until an operator runs
  // `provision-server rollout resume ID` (or resumes it over HTTP). One audit row `rollout.migrated` per
  // fan-out (rollout_id, the counts by state); then the fanouts table is dropped.
  `
  CREATE TEMP TABLE migration_8_clock AS SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS now;

  INSERT INTO rollouts (id, created_at, action, params, user_id, selector, ttl_s, deadline_at, rate_per_min, ramp_from, ramp_factor,
      abort_percent, abort_min, concurrency, state, state_reason, updated_at, planning, retry_of)
    SELECT f.id, f.created_at, f.action, f.params, NULL, f.selector, 300, k.now + 30 * 86400000, NULL, NULL, NULL,
      NULL, 10, 32, 'paused', 'migrated from a fan-out: resume with provision-server rollout resume ' || f.id, k.now, 0, NULL
    FROM fanouts f, migration_8_clock k;

  INSERT INTO rollout_targets (rollout_id, device_id, state, jti, attempts, code, sent_at, updated_at)
    SELECT t.fanout_id, t.device_id,
      CASE WHEN a.jti IS NOT NULL THEN a.ack_status WHEN u.expires_at > k.now THEN 'sent' ELSE 'pending' END,
      CASE WHEN a.jti IS NOT NULL THEN a.jti WHEN u.expires_at > k.now THEN u.jti END,
      (SELECT COUNT(*) FROM commands c WHERE c.fanout_id = t.fanout_id AND c.device_id = t.device_id),
      CASE WHEN a.jti IS NOT NULL THEN a.ack_code WHEN u.jti IS NOT NULL AND u.expires_at <= k.now THEN 'E_TIMEOUT' END,
      CASE WHEN a.jti IS NOT NULL THEN a.sent_at WHEN u.expires_at > k.now THEN COALESCE(u.sent_at, u.created_at) END,
      k.now
    FROM (SELECT DISTINCT f.id AS fanout_id, d.value AS device_id FROM fanouts f, json_each(f.devices) d) t
    CROSS JOIN migration_8_clock k
    LEFT JOIN commands a ON a.jti = (SELECT c.jti FROM commands c WHERE c.fanout_id = t.fanout_id AND c.device_id = t.device_id AND c.ack_status IS NOT NULL
      ORDER BY c.acked_at DESC, c.created_at DESC, c.seq DESC LIMIT 1)
    LEFT JOIN commands u ON u.jti = (SELECT c.jti FROM commands c WHERE c.fanout_id = t.fanout_id AND c.device_id = t.device_id AND c.ack_status IS NULL
      AND c.voided_at IS NULL ORDER BY c.created_at DESC, c.seq DESC LIMIT 1);

  UPDATE rollouts SET state = 'completed', state_reason = 'migrated from a fan-out: every device answered',
      finished_at = (SELECT now FROM migration_8_clock)
    WHERE id IN (SELECT id FROM fanouts)
      AND NOT EXISTS (SELECT 1 FROM rollout_targets t WHERE t.rollout_id = rollouts.id AND t.state IN ('pending', 'sent'));

  INSERT INTO audit (at, event, device_id, detail)
    SELECT k.now, 'rollout.migrated', NULL, json_object(
        'rollout_id', r.id, 'from', 'fanout', 'action', r.action, 'selector', json(r.selector), 'state', r.state,
        'devices', (SELECT COUNT(*) FROM rollout_targets t WHERE t.rollout_id = r.id),
        'applied', (SELECT COUNT(*) FROM rollout_targets t WHERE t.rollout_id = r.id AND t.state = 'applied'),
        'rejected', (SELECT COUNT(*) FROM rollout_targets t WHERE t.rollout_id = r.id AND t.state = 'rejected'),
        'failed', (SELECT COUNT(*) FROM rollout_targets t WHERE t.rollout_id = r.id AND t.state = 'failed'),
        'rolled_back', (SELECT COUNT(*) FROM rollout_targets t WHERE t.rollout_id = r.id AND t.state = 'rolled_back'),
        'sent', (SELECT COUNT(*) FROM rollout_targets t WHERE t.rollout_id = r.id AND t.state = 'sent'),
        'pending', (SELECT COUNT(*) FROM rollout_targets t WHERE t.rollout_id = r.id AND t.state = 'pending'))
    FROM fanouts f JOIN rollouts r ON r.id = f.id CROSS JOIN migration_8_clock k
    ORDER BY f.created_at, f.id;

  DROP TABLE fanouts;
  DROP TABLE migration_8_clock;
  `,
  // 9: the audit hash chain (issue 25, server/storage/audit-chain.ts). Each row's prev_hash (the hash of the row
  // before it; the first's: AUDIT_GENESIS) and hash; audit_head, one row: the last row's id and hash, read and moved
  // by every append in its transaction (appendAudit). The rows already there are chained in id order by
  // MIGRATION_STEPS[9] (JavaScript: SHA-256), with the update trigger dropped for that and made again after.
  // An insert without its chain columns is refused.
  `
  ALTER TABLE audit ADD COLUMN prev_hash TEXT;
  ALTER TABLE audit ADD COLUMN hash TEXT;
  CREATE TABLE audit_head (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    last_id INTEGER NOT NULL,
    hash TEXT NOT NULL
  ) STRICT;
  CREATE TRIGGER audit_chained BEFORE INSERT ON audit WHEN NEW.prev_hash IS NULL OR NEW.hash IS NULL
    BEGIN SELECT RAISE(ABORT, 'an audit row needs its chain hashes'); END;
  `,
  // 10: operator accounts (server/storage/operator-records.ts): operators with a role and an encoded scrypt
  // hash (parameters and salt inside it: server/operators/password.ts), their API tokens and console
  // sessions (secrets stored as SHA-256 only); removing an operator removes both.
  `
  CREATE TABLE operators (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    disabled_at INTEGER
  ) STRICT;

  CREATE TABLE operator_tokens (
    hash TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    operator TEXT NOT NULL REFERENCES operators (name) ON DELETE CASCADE,
    label TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    last_used_at INTEGER,
    revoked_at INTEGER
  ) STRICT;
  CREATE INDEX operator_tokens_operator ON operator_tokens (operator);

  CREATE TABLE operator_sessions (
    hash TEXT PRIMARY KEY,
    operator TEXT NOT NULL REFERENCES operators (name) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    idle_ms INTEGER NOT NULL CHECK (idle_ms > 0),
    expires_at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX operator_sessions_operator ON operator_sessions (operator);
  `,
  // 11: reserved for console-auth's migration (branch console-auth); empty here, replaced when both are merged.
  `
  `,
  // 12: the console's read models (issue 24, api-fleet). Indexes for the fleet page's filters and sorts (GET
  // /devices: last seen, agent version as devices.agentVersion reads it, flagged devices) and for a device's newest
  // commands (its last command, GET /devices/{id}/commands); each device's presence changes as its signed reports
  // tell them (device_presence: online on a connect or interval report after offline/none, offline on its will or
  // clean stop, and `timeout` when a report arrives after the grace had lapsed: GET /devices/{id}/presence); an
  // enrollment token's revocation (DELETE /enrollment/tokens/{id}: it can no longer be used).
  `
  CREATE INDEX devices_last_seen ON devices (last_seen_at);
  CREATE INDEX devices_version ON devices (COALESCE(agent_version, json_extract(reported, '$.agent_version')));
  CREATE INDEX devices_flagged ON devices (flagged_at) WHERE flagged_at IS NOT NULL;
  CREATE INDEX commands_device_created ON commands (device_id, created_at, seq);
  CREATE TABLE device_presence (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    presence TEXT NOT NULL CHECK (presence IN ('online', 'offline')),
    reason TEXT NOT NULL,
    session TEXT,
    conn INTEGER
  ) STRICT;
  CREATE INDEX device_presence_device ON device_presence (device_id, id);
  ALTER TABLE enrollment_tokens ADD COLUMN revoked_at INTEGER;
  `,
];

/**
 * JavaScript run after a migration's SQL, in its transaction (keyed by the
 * version the migration makes).
 */
export const MIGRATION_STEPS: Readonly<Partial<Record<number, (db: Database.Database) => void>>> = {
  9: (db) => {
    db.exec('DROP TRIGGER audit_append_only_update');
    const update = db.prepare('UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?');
    let prev = AUDIT_GENESIS;
    let lastId = 0;
    const rows = db.prepare('SELECT id, at, event, device_id, detail FROM audit ORDER BY id').all() as {
      id: number;
      at: number;
      event: string;
      device_id: string | null;
      detail: string;
    }[];
    for (const r of rows) {
      const hash = chainHash(prev, { id: r.id, at: r.at, event: r.event, deviceId: r.device_id, detail: JSON.parse(r.detail) as unknown });
      update.run(prev, hash, r.id);
      prev = hash;
      lastId = r.id;
    }
    db.prepare('INSERT INTO audit_head (one, last_id, hash) VALUES (1, ?, ?)').run(lastId, prev);
    db.exec("CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;");
  },
};

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
      MIGRATION_STEPS[v + 1]?.(db);
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
  return SCHEMA_VERSION;
}
