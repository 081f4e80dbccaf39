/**
 * Verifying an audit log (issue 25), from the registry (`provision-server
 * audit verify`) or from an export (server/audit/verify-export.ts): no I/O of
 * its own and no registry code, so the standalone verifier shares it.
 *
 * In id order, each entry is checked for
 *  - the chain (server/audit/chain.ts): its prev_hash is the hash of the entry
 *    before it and its hash that of its content (E_AUDIT_CHAIN; an entry that
 *    cannot be read: E_AUDIT_MALFORMED);
 *  - the checkpoints: every checkpoint's signature verifies with a server key,
 *    and the chain's hash at its last_id is the one it signed; the log must
 *    reach the last checkpoint (a cut tail) and its head (E_AUDIT_CHECKPOINT,
 *    E_AUDIT_CHAIN);
 *  - the boards' signatures: a `command.ack` (or `security.ack_contradiction`)
 *    that carries `ack_jws` must verify with a signing key registered for its
 *    device (any it ever had) and say what the row says (iss, ref, jti, status,
 *    code) (E_AUDIT_ACK); likewise a `device.version.reported` row's
 *    `report_jws` (iss, jti, agent_version: E_AUDIT_REPORT).
 * The first problem found is reported with the entry it is at.
 */
import { KeyRing, verifyJws, type PublicJwk } from '../../protocol/index.js';
import { parseJwsHeader } from '../../protocol/compact.js';
import { ChainChecker, type ChainedEntry, type ChainHead } from './chain.js';
import { CheckpointError, verifyCheckpoint, type CheckpointRecord } from './checkpoint.js';

export type AuditProblemCode = 'E_AUDIT_CHAIN' | 'E_AUDIT_MALFORMED' | 'E_AUDIT_CHECKPOINT' | 'E_AUDIT_ACK' | 'E_AUDIT_REPORT';

/** The first problem found: where (entry id and event, the export's line; a checkpoint) and what. */
export interface AuditBreak {
  code: AuditProblemCode;
  /** The entry it is at (for a cut tail: the first entry missing); null: not at an entry (a checkpoint's signature). */
  id: number | null;
  event: string | null;
  /** The export's line (1-based), when verifying an export. */
  line?: number;
  /** The checkpoint involved, if any. */
  checkpoint?: number;
  /** Short reason: link, hash, order, malformed, missing, head, truncated, signature, mismatch, unsigned-key. */
  reason: string;
  message: string;
}

export interface AuditReport {
  /** Entries checked (those that passed). */
  entries: number;
  first: number | null;
  last: { id: number; hash: string };
  checkpoints: { verified: number; last?: { id: number; lastId: number; at: number } };
  /** Board-signed acks verified, acks from before they were kept, devices whose keys were used. */
  acks: { verified: number; unsigned: number; devices: number };
  /** Board-signed reports verified (`device.version.reported`). */
  reports: { verified: number };
  broken?: AuditBreak;
}

/** An entry as a verifier reads it, with the export's line when from an export. */
export type SourceEntry = ChainedEntry & { line?: number };

export interface AuditSource {
  /** Where checking starts: after this entry id, chained after this hash (AUDIT_GENESIS and 0: the start). */
  start: { afterId: number; hash: string };
  /** The entries after start.afterId, in order (up to the head). */
  entries: AsyncIterable<SourceEntry> | Iterable<SourceEntry>;
  /** The head the log must end at (the registry's audit_head, the export's head). */
  head: ChainHead;
  checkpoints: readonly CheckpointRecord[];
  /** The server's public signing keys (checkpoints). */
  serverKeys: readonly PublicJwk[];
  /** The server's id: every checkpoint's `iss` (undefined: not checked). */
  serverId?: string;
  /** A device's signing keys, every one it was registered with (asked once per device met). */
  deviceKeys: (deviceId: string) => Promise<readonly PublicJwk[]> | readonly PublicJwk[];
}

/** Events whose rows carry a board's signed ack (`ack_jws`). */
export const SIGNED_ACK_EVENTS: ReadonlySet<string> = new Set(['command.ack', 'security.ack_contradiction']);

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Events whose rows carry a board's signed report (`report_jws`): a report that changed the agent version, or the presence. */
export const SIGNED_REPORT_EVENTS: ReadonlySet<string> = new Set(['device.version.reported', 'device.presence']);

/** What the row says the board signed: the fields its JWS payload must carry. */
function signedFieldsOf(event: string, detail: Record<string, unknown>): Record<string, unknown> | undefined {
  if (event === 'command.ack') return { ref: detail.jti, jti: detail.ack_jti, status: detail.status, code: detail.code };
  if (event === 'device.presence') return { jti: detail.report_jti, reason: detail.report_reason };
  if (SIGNED_REPORT_EVENTS.has(event)) return { jti: detail.report_jti, agent_version: detail.to };
  const claimed = detail.claimed;
  if (isObj(claimed)) return { ref: detail.jti, jti: claimed.ack_jti, status: claimed.status, code: claimed.code };
  return undefined;
}

export async function verifyAudit(src: AuditSource): Promise<AuditReport> {
  const report: AuditReport = {
    entries: 0,
    first: null,
    last: { id: src.start.afterId, hash: src.start.hash },
    checkpoints: { verified: 0 },
    acks: { verified: 0, unsigned: 0, devices: 0 },
    reports: { verified: 0 },
  };
  const fail = (b: AuditBreak): AuditReport => ({ ...report, broken: b });

  // The checkpoints first: a checkpoint that does not verify is no anchor.
  const serverRing = await KeyRing.create(src.serverKeys);
  const checkpoints = [...src.checkpoints].sort((a, b) => a.lastId - b.lastId || a.id - b.id);
  for (const c of checkpoints) {
    try {
      const claims = await verifyCheckpoint(c.jws, serverRing);
      if (claims.lastId !== c.lastId || claims.hash !== c.hash || claims.at !== c.at)
        throw new CheckpointError('its stored columns differ from what it signed');
      if (src.serverId !== undefined && claims.iss !== src.serverId)
        throw new CheckpointError(`it was issued by ${JSON.stringify(claims.iss)}, not ${src.serverId}`);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      return fail({
        code: 'E_AUDIT_CHECKPOINT',
        id: null,
        event: null,
        checkpoint: c.id,
        reason: 'signature',
        message: `checkpoint #${c.id} (entry ${c.lastId}): ${message}`,
      });
    }
  }
  let cp = 0;
  while (cp < checkpoints.length && (checkpoints[cp] as CheckpointRecord).lastId <= src.start.afterId) cp++;

  const checker = new ChainChecker(src.start.hash);
  const rings = new Map<string, Promise<KeyRing>>();
  const ringOf = (deviceId: string): Promise<KeyRing> => {
    let r = rings.get(deviceId);
    if (!r) {
      r = Promise.resolve(src.deviceKeys(deviceId)).then((keys) => KeyRing.create(keys));
      rings.set(deviceId, r);
    }
    return r;
  };
  let lastId = src.start.afterId;
  for await (const e of src.entries) {
    const at = { id: e.id, event: typeof e.event === 'string' ? e.event : null, ...(e.line !== undefined ? { line: e.line } : {}) };
    const where = `entry ${e.id}${at.event !== null ? ` (${at.event})` : ''}${e.line !== undefined ? ` at line ${e.line}` : ''}`;
    if (lastId >= src.head.lastId && e.id > src.head.lastId) {
      return fail({ ...at, code: 'E_AUDIT_CHAIN', reason: 'head', message: `${where}: after the head (entry ${src.head.lastId})` });
    }
    const broken = checker.check(e);
    if (broken?.reason === 'link' && e.id > lastId + 1) {
      // The ids jump and the link breaks: the entry after the last good one is gone (deleted, or moved later).
      const gone = lastId + 1;
      return fail({
        code: 'E_AUDIT_CHAIN',
        id: gone,
        event: null,
        ...(e.line !== undefined ? { line: e.line } : {}),
        reason: 'missing',
        message: `entry ${gone} is missing or out of place: ${where} follows entry ${lastId} but its prev_hash is not that entry's hash`,
      });
    }
    if (broken) {
      const message = {
        link: `its prev_hash is not the hash of the entry before it (an entry removed, reordered or inserted before it)`,
        hash: `its hash is not that of its content (the entry was edited)`,
        order: `its id is not above the entry before it (entries reordered)`,
        missing: `it has no chain hashes`,
        malformed: `it cannot be read: ${broken.found ?? ''}`,
      }[broken.reason];
      return fail({
        ...at,
        code: broken.reason === 'malformed' ? 'E_AUDIT_MALFORMED' : 'E_AUDIT_CHAIN',
        reason: broken.reason,
        message: `${where}: ${message}`,
      });
    }
    if (report.first === null) report.first = e.id;
    // A checkpoint whose entry is not in the log (removed, with the links after it rewritten).
    const skipped = checkpoints[cp];
    if (skipped && skipped.lastId < e.id) {
      return fail({
        ...at,
        code: 'E_AUDIT_CHECKPOINT',
        checkpoint: skipped.id,
        reason: 'missing',
        message: `${where}: checkpoint #${skipped.id} signed entry ${skipped.lastId}, which is not in the log`,
      });
    }
    while (cp < checkpoints.length && (checkpoints[cp] as CheckpointRecord).lastId === e.id) {
      const c = checkpoints[cp] as CheckpointRecord;
      if (c.hash !== checker.head) {
        return fail({
          ...at,
          code: 'E_AUDIT_CHECKPOINT',
          checkpoint: c.id,
          reason: 'mismatch',
          message: `${where}: checkpoint #${c.id} signed another hash for it (the log up to here was rewritten)`,
        });
      }
      report.checkpoints.verified++;
      report.checkpoints.last = { id: c.id, lastId: c.lastId, at: c.at };
      cp++;
    }
    if (SIGNED_ACK_EVENTS.has(e.event) && isObj(e.detail)) {
      const jws = e.detail.ack_jws;
      if (typeof jws !== 'string') {
        if (e.event === 'command.ack') report.acks.unsigned++;
      } else {
        const problem = await checkSigned(e, e.detail, jws, 'ack', ringOf);
        if (problem) return fail({ ...at, code: 'E_AUDIT_ACK', reason: problem.reason, message: `${where}: ${problem.message}` });
        report.acks.verified++;
      }
    } else if (SIGNED_REPORT_EVENTS.has(e.event) && isObj(e.detail) && typeof e.detail.report_jws === 'string') {
      const problem = await checkSigned(e, e.detail, e.detail.report_jws, 'report', ringOf);
      if (problem) return fail({ ...at, code: 'E_AUDIT_REPORT', reason: problem.reason, message: `${where}: ${problem.message}` });
      report.reports.verified++;
    }
    lastId = e.id;
    report.entries++;
    report.last = { id: e.id, hash: checker.head };
  }
  const cut = checkpoints[cp];
  if (cut) {
    return fail({
      code: 'E_AUDIT_CHECKPOINT',
      id: lastId + 1,
      event: null,
      checkpoint: cut.id,
      reason: 'truncated',
      message: `the log ends at entry ${lastId}, but checkpoint #${cut.id} signed entry ${cut.lastId}: entries from ${lastId + 1} on are missing`,
    });
  }
  if (lastId !== src.head.lastId || checker.head !== src.head.hash) {
    return fail({
      code: 'E_AUDIT_CHAIN',
      id: lastId < src.head.lastId ? lastId + 1 : src.head.lastId,
      event: null,
      reason: 'head',
      message:
        lastId < src.head.lastId
          ? `the log ends at entry ${lastId}, but its head is entry ${src.head.lastId}: entries from ${lastId + 1} on are missing`
          : `the head (entry ${src.head.lastId}, hash ${src.head.hash.slice(0, 12)}...) is not the last entry's (hash ${checker.head.slice(0, 12)}...)`,
    });
  }
  report.acks.devices = rings.size;
  return report;
}

async function checkSigned(
  e: SourceEntry,
  detail: Record<string, unknown>,
  jws: string,
  what: 'ack' | 'report',
  ringOf: (deviceId: string) => Promise<KeyRing>,
): Promise<{ reason: string; message: string } | undefined> {
  if (e.deviceId === null) return { reason: 'mismatch', message: `a signed ${what} on an entry without a device` };
  const ring = await ringOf(e.deviceId);
  if (ring.size === 0) return { reason: 'signature', message: `no signing key of ${e.deviceId} is known: its ${what} cannot be verified` };
  let payload: Record<string, unknown>;
  try {
    payload = (await verifyJws(jws, parseJwsHeader(jws), ring)).payload;
  } catch (err) {
    return {
      reason: 'signature',
      message: `the board's signature does not verify with any key registered for ${e.deviceId}: ${err instanceof Error ? err.message : String(err)}`,
    };
  }
  const expected = signedFieldsOf(e.event, detail);
  if (!expected) return { reason: 'mismatch', message: `the row does not say what the ${what} claimed` };
  if (payload.iss !== e.deviceId) return { reason: 'mismatch', message: `the signed ${what} was issued by ${JSON.stringify(payload.iss)}, not ${e.deviceId}` };
  for (const [k, v] of Object.entries(expected)) {
    if (payload[k] !== v) return { reason: 'mismatch', message: `the signed ${what} says ${k}=${JSON.stringify(payload[k])}, the row ${JSON.stringify(v)}` };
  }
  return undefined;
}

/** One line of summary for a report without a break. */
export function summary(r: AuditReport): string {
  const range = r.first === null ? 'no entries' : `${r.entries} ${r.entries === 1 ? 'entry' : 'entries'} (${r.first}..${r.last.id})`;
  const cps = r.checkpoints.last
    ? `${r.checkpoints.verified} checkpoint(s) verified, the last #${r.checkpoints.last.id} at entry ${r.checkpoints.last.lastId} (${new Date(r.checkpoints.last.at).toISOString()})`
    : 'no checkpoint';
  const reports = r.reports.verified ? ` and ${r.reports.verified} signed report(s)` : '';
  const acks = `${r.acks.verified} signed ack(s)${reports} verified (${r.acks.devices} device(s))${r.acks.unsigned ? `, ${r.acks.unsigned} ack(s) from before signed acks` : ''}`;
  return `audit OK: ${range}, head ${r.last.hash}; ${cps}; ${acks}`;
}
