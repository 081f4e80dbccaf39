/**
 * The audit chain of a registry (issue 25): signed checkpoints of its head,
 * verification of the stored log (AuditSource over the storage), and the
 * export (server/audit/export-format.ts) for the standalone verifier.
 */
import { open, rename, rm } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { CodedError, KeyRing, toPublicJwk, type PublicJwk } from '../../protocol/index.js';
import type { ServerKeys } from '../keys/server-keys.js';
import type { Storage } from '../storage/types.js';
import { AUDIT_GENESIS, type ChainHead } from './chain.js';
import { signCheckpoint, verifyCheckpoint, type CheckpointRecord } from './checkpoint.js';
import { checkpointJson, entryLine, headerLine } from './export-format.js';
import { SIGNED_ACK_EVENTS, SIGNED_REPORT_EVENTS, verifyAudit, type AuditReport, type SourceEntry } from './verify.js';

const BATCH = 1000;

/** The server's public signing key(s): the checkpoints' verification keys. */
export const serverSigningKeys = (keys: ServerKeys): PublicJwk[] => [toPublicJwk(keys.signing)];

export interface CheckpointResult {
  checkpoint: CheckpointRecord;
  /** false: the head had not moved since the last checkpoint, which is returned. */
  created: boolean;
}

/**
 * Signs the chain's head and stores the checkpoint; when the head has not
 * moved since the newest checkpoint, returns that one (created: false).
 * E_AUDIT_EMPTY: the log has no entry yet.
 */
export async function makeCheckpoint(storage: Storage, keys: ServerKeys, now: number): Promise<CheckpointResult> {
  const head = await storage.audit.head();
  if (head.lastId === 0) throw new CodedError('E_AUDIT_EMPTY', 'the audit log has no entry yet: nothing to checkpoint');
  const last = (await storage.audit.checkpoints()).at(-1);
  if (last && last.lastId === head.lastId && last.hash === head.hash) return { checkpoint: last, created: false };
  const jws = await signCheckpoint({ iss: keys.serverId, lastId: head.lastId, hash: head.hash, at: now }, keys.signing);
  return { checkpoint: await storage.audit.addCheckpoint({ at: now, lastId: head.lastId, hash: head.hash, jws }), created: true };
}

async function* storedEntries(storage: Storage, afterId: number, upTo: number): AsyncGenerator<SourceEntry> {
  let last = afterId;
  for (;;) {
    const rows = await storage.audit.entries(last, BATCH);
    for (const r of rows) {
      if (r.id > upTo) return;
      yield r;
      last = r.id;
    }
    if (rows.length < BATCH) return;
  }
}

/**
 * Verifies the stored log (verifyAudit) up to the head read at the start
 * (entries appended meanwhile are left for next time). `since`: start after
 * this checkpoint (its signature verified, the stored entry it signed
 * checked against it).
 */
export async function verifyRegistry(storage: Storage, keys: ServerKeys, since?: CheckpointRecord): Promise<AuditReport> {
  const head: ChainHead = await storage.audit.head();
  const serverKeys = serverSigningKeys(keys);
  let start = { afterId: 0, hash: AUDIT_GENESIS };
  if (since) {
    try {
      const claims = await verifyCheckpoint(since.jws, await KeyRing.create(serverKeys));
      if (claims.lastId !== since.lastId || claims.hash !== since.hash) throw new Error('its columns differ from what it signed');
      if (claims.iss !== keys.serverId) throw new Error(`it was issued by ${JSON.stringify(claims.iss)}, not ${keys.serverId}`);
    } catch (err) {
      return brokenSince(`checkpoint #${since.id} does not verify: ${err instanceof Error ? err.message : String(err)}`, since, 'signature', null);
    }
    const [entry] = await storage.audit.entries(since.lastId - 1, 1);
    if (!entry || entry.id !== since.lastId)
      return brokenSince(`entry ${since.lastId}, signed by checkpoint #${since.id}, is not in the log`, since, 'missing', since.lastId);
    if (entry.hash !== since.hash) {
      return brokenSince(
        `entry ${since.lastId} (${entry.event}): its stored hash is not the one checkpoint #${since.id} signed`,
        since,
        'mismatch',
        since.lastId,
        entry.event,
      );
    }
    start = { afterId: since.lastId, hash: since.hash };
  }
  return verifyAudit({
    start,
    entries: storedEntries(storage, start.afterId, head.lastId),
    head,
    checkpoints: await storage.audit.checkpoints(),
    serverKeys,
    serverId: keys.serverId,
    deviceKeys: async (id) => (await storage.audit.deviceSigningKeys([id])).get(id) ?? [],
  });
}

function brokenSince(message: string, c: CheckpointRecord, reason: string, id: number | null, event: string | null = null): AuditReport {
  return {
    entries: 0,
    first: null,
    last: { id: c.lastId, hash: c.hash },
    checkpoints: { verified: 0 },
    acks: { verified: 0, unsigned: 0, devices: 0 },
    reports: { verified: 0 },
    broken: { code: 'E_AUDIT_CHECKPOINT', id, event, checkpoint: c.id, reason, message },
  };
}

export interface ExportResult {
  entries: number;
  head: ChainHead;
  checkpoints: number;
  devices: number;
}

/**
 * Writes the export (server/audit/export-format.ts) to `out`: a temporary
 * file beside it, renamed over it when complete (mode 0600: the log names
 * devices and operators). Entries up to the head read at the start.
 */
export async function writeExport(storage: Storage, keys: ServerKeys, out: string, now: number): Promise<ExportResult> {
  const head = await storage.audit.head();
  const checkpoints = (await storage.audit.checkpoints()).filter((c) => c.lastId <= head.lastId);
  // The keys of the devices whose signed acks or reports are in the export (all each ever had).
  const deviceKeys = await storage.audit.deviceSigningKeys(await storage.audit.devicesWithEvents([...SIGNED_ACK_EVENTS, ...SIGNED_REPORT_EVENTS], head.lastId));
  const tmp = join(dirname(out), `.${basename(out)}.tmp-${randomBytes(6).toString('hex')}`);
  let fh;
  try {
    fh = await open(tmp, 'wx', 0o600);
  } catch (err) {
    throw new CodedError('E_NO_FILE', `cannot write ${out}: ${err instanceof Error ? err.message : String(err)}`);
  }
  let entries = 0;
  try {
    await fh.write(
      headerLine({
        exported_at: now,
        server_id: keys.serverId,
        head: { last_id: head.lastId, hash: head.hash },
        server_keys: serverSigningKeys(keys),
        device_keys: Object.fromEntries(deviceKeys),
        checkpoints: checkpoints.map(checkpointJson),
      }),
    );
    let chunk = '';
    for await (const e of storedEntries(storage, 0, head.lastId)) {
      chunk += entryLine(e);
      entries++;
      if (chunk.length > 1 << 20) {
        await fh.write(chunk);
        chunk = '';
      }
    }
    await fh.write(chunk);
    await fh.sync();
    await fh.close();
    fh = undefined;
    await rename(tmp, out);
  } catch (err) {
    await fh?.close().catch(() => undefined);
    await rm(tmp, { force: true });
    throw err;
  }
  return { entries, head, checkpoints: checkpoints.length, devices: deviceKeys.size };
}
