/**
 * The SQLite implementation of the storage interface: the embedded default
 * (one file, DATA/registry.sqlite, better-sqlite3 in WAL mode), shared by the
 * processes of one machine. Each call runs synchronously inside SQLite
 * (IMMEDIATE transactions serialise writers across processes) and resolves
 * at once.
 */
import type Database from 'better-sqlite3';
import { listTokens, pendingEnrollments } from '../../registry/token-list.js';
import { queryAudit } from '../../registry/audit-query.js';
import { Registry } from '../../registry/registry.js';
import { ReleaseStore as SqliteReleases } from '../../registry/releases.js';
import { RolloutStore as SqliteRollouts } from '../../registry/rollouts.js';
import { sampleIds, summarize } from './plan-queries.js';
import type { AuditRecord, TargetState } from '../records.js';
import type {
  AuditStore,
  CommandStore,
  DeviceStore,
  EnrollmentStore,
  LeaseStore,
  ReleaseStore,
  RolloutStore,
  SeqStore,
  Storage,
  StorageInfo,
} from '../types.js';

export interface SqliteOpenOptions {
  /** Create the file when missing (init); otherwise a missing registry is E_NO_REGISTRY. */
  create?: boolean;
  now?: () => number;
}

export function openSqliteStorage(path: string, options: SqliteOpenOptions = {}): SqliteStorage {
  return new SqliteStorage(Registry.open(path, options));
}

export class SqliteStorage implements Storage {
  readonly info: StorageInfo;
  readonly devices: DeviceStore;
  readonly enrollment: EnrollmentStore;
  readonly seq: SeqStore;
  readonly commands: CommandStore;
  readonly rollouts: RolloutStore;
  readonly leases: LeaseStore;
  readonly audit: AuditStore;
  readonly releases: ReleaseStore;
  /** The registry underneath (tests, `registry migrate`). */
  readonly registry: Registry;

  constructor(registry: Registry) {
    this.registry = registry;
    this.info = { kind: 'sqlite', location: registry.path };
    const r = registry;
    const db = registry.db;
    this.devices = {
      get: async (id) => r.getDevice(id),
      require: async (id) => r.requireDevice(id),
      list: async (filter) => r.listDevices(filter),
      add: async (input, options) => r.addDevice(input, options),
      remove: async (id) => r.removeDevice(id),
      addTags: async (id, tags) => r.addTags(id, tags),
      removeTags: async (id, tags) => r.removeTags(id, tags),
      tagsOf: async (id) => r.tagsOf(id),
      listTags: async () => r.listTags(),
      recordReport: async (id, claims) => r.recordReport(id, claims),
      verificationKeys: async (id) => r.verificationKeys(id),
      reportVerificationKeys: async (id) => r.reportVerificationKeys(id),
    };
    this.enrollment = {
      createToken: async (deviceId, userId, ttlMs) => r.createToken(deviceId, userId, ttlMs),
      enroll: async (input) => r.enroll(input),
      listTokens: async (filter) => listTokens(r, filter),
      pendingEnrollments: async () => pendingEnrollments(r),
    };
    this.seq = {
      allocate: async (id) => r.allocateSeq(id),
      allocateMany: async (ids) => r.allocateSeqs(ids),
    };
    this.commands = {
      record: async (c) => r.recordCommand(c),
      recordMany: async (cs) => r.recordCommands(cs),
      markSent: async (jti) => r.markSent(jti),
      markSentMany: async (jtis) => r.markSentMany(jtis),
      get: async (jti) => r.getCommand(jti),
      sealed: async (jti) => r.sealedCommand(jti),
      list: async (filter) => r.listCommands(filter),
      recordAck: async (deviceId, ack, effects) => r.recordAck(deviceId, ack, effects),
      createFanout: async (action, params, selector, devices) => r.createFanout(action, params, selector, devices),
      getFanout: async (id) => r.getFanout(id),
    };
    const ro = new SqliteRollouts(r);
    this.rollouts = {
      create: async (spec, ids) => ro.create(spec, ids),
      createFromSelector: (spec, options) => ro.createFromSelector(spec, options),
      get: async (id) => ro.get(id),
      require: async (id) => ro.require(id),
      list: async (options) => ro.list(options),
      counts: async (id) => ro.counts(id),
      targets: async (id, options) => ro.targets(id, options),
      deliverable: async (id, now, limit) => ro.deliverable(id, now, limit),
      pendingBreakdown: async (id, now) => ro.pendingBreakdown(id, now),
      move: async (id, deviceId, from, to, fields) => ro.move(id, deviceId, from, to, fields),
      claim: async (id, deviceId, lease) => ro.claim(id, deviceId, lease),
      markSent: async (id, deviceId, jti, lease) => ro.markSent(id, deviceId, jti, lease),
      reclaimSending: async (id, lease) => ro.reclaimSending(id, lease),
      unansweredValid: async (id, now) => ro.unansweredValid(id, now),
      answered: async (id) => ro.answered(id),
      inFlight: async (id, now) => ro.inFlight(id, now),
      unansweredExpired: async (deviceId, now) => ro.unansweredExpired(deviceId, now),
      pendingFor: async (deviceId) => ro.pendingFor(deviceId),
      expireAll: async (id) => ro.expireAll(id),
      cancelPending: async (id, code) => ro.cancelPending(id, code),
      finishInterruptedPlanning: async (id) => ro.finishInterruptedPlanning(id),
      setState: async (id, from, to, reason, by) => ro.setState(id, from, to, reason, by),
      finish: async (id, state, reason) => ro.finish(id, state, reason),
      summarize: (selector, needsDeviceUser, now) => summarize(r, selector, needsDeviceUser, now),
      sampleIds: async (selector, limit) => sampleIds(r, selector, limit),
      removedTargets: async (id, states: readonly TargetState[]) =>
        (
          db
            .prepare(
              `SELECT COUNT(*) AS n FROM rollout_targets t WHERE t.rollout_id = ? AND t.state IN (${states.map(() => '?').join(',')})
                 AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = t.device_id)`,
            )
            .get(id, ...states) as { n: number }
        ).n,
      lastSentAt: async (id) => (db.prepare('SELECT MAX(sent_at) AS t FROM rollout_targets WHERE rollout_id = ?').get(id) as { t: number | null }).t,
    };
    this.leases = {
      take: async (name, holder, ttlMs) => ro.takeLease(name, holder, ttlMs),
      renew: async (lease) => ro.renewLease(lease),
      release: async (name, holder) => ro.releaseLease(name, holder),
      holder: async (name) => ro.leaseHolder(name),
    };
    this.audit = {
      append: async (event, deviceId, detail) => r.audit(event, deviceId, detail),
      log: async (options) => r.auditLog(options),
      query: async (filter) => queryAudit(r, filter),
      lastId: async () => (db.prepare('SELECT COALESCE(MAX(id), 0) AS id FROM audit').get() as { id: number }).id,
      eventsSince: async (afterId, upTo, prefix, limit) => {
        // A range on the audit_event index (LIKE would not use it): prefix <= event < prefix with its last character + 1.
        const end = prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
        const rows = db
          .prepare('SELECT id, at, event, device_id, detail FROM audit WHERE event >= ? AND event < ? AND id > ? AND id <= ? ORDER BY id LIMIT ?')
          .all(prefix, end, afterId, upTo, limit) as { id: number; at: number; event: string; device_id: string | null; detail: string }[];
        return rows.map((x): AuditRecord => ({
          id: x.id,
          at: x.at,
          event: x.event,
          deviceId: x.device_id,
          detail: JSON.parse(x.detail) as Record<string, unknown>,
        }));
      },
    };
    const rel = new SqliteReleases(r);
    this.releases = {
      list: async (filter) => rel.list(filter),
      get: async (version, arch) => rel.get(version, arch),
      bySha256: async (sha) => rel.bySha256(sha),
      require: async (version, arch) => rel.require(version, arch),
      add: async (m, jws, dir) => rel.add(m, jws, dir),
      inUse: async (x) => rel.inUse(x),
      markRemoved: async (x) => rel.markRemoved(x),
      upgradeInFlight: async (deviceId, sha) => rel.upgradeInFlight(deviceId, sha),
    };
  }

  /** The SQLite database (tests, `registry migrate`). */
  get db(): Database.Database {
    return this.registry.db;
  }

  get open(): boolean {
    return this.registry.db.open;
  }

  now(): number {
    return this.registry.now();
  }

  async close(): Promise<void> {
    this.registry.close();
  }
}
