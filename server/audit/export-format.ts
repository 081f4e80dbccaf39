/**
 * The audit export (`provision-server audit export`), JSON lines, no I/O:
 *
 *   line 1: {"format":"provision-server-audit-export","version":1,"exported_at":MS,"server_id":ID,
 *            "head":{"last_id":N,"hash":HEX},"server_keys":[JWK...],"device_keys":{"DEVICE":[JWK...]},
 *            "checkpoints":[{"id","at","last_id","hash","jws"}...]}
 *   then one line per entry, in id order, up to the head:
 *            {"id","at","event","device_id","detail","prev_hash","hash"}
 *
 * An entry line holds exactly the hashed fields (server/audit/chain.ts) and its
 * two chain hashes. parseExport turns the text into an AuditSource for
 * verifyAudit; it refuses a header it cannot use (E_AUDIT_EXPORT) and marks an
 * entry line it cannot read as malformed (the verifier names its line).
 */
import { CodedError, isRecord, parsePublicJwk, type PublicJwk } from '../../protocol/index.js';
import { AUDIT_GENESIS, type ChainedEntry, type ChainHead } from './chain.js';
import { isCheckpointRecord, type CheckpointRecord } from './checkpoint.js';
import type { AuditSource, SourceEntry } from './verify.js';

export const EXPORT_FORMAT = 'provision-server-audit-export';
export const EXPORT_VERSION = 1;

export interface ExportHeader {
  format: typeof EXPORT_FORMAT;
  version: typeof EXPORT_VERSION;
  exported_at: number;
  server_id: string;
  head: { last_id: number; hash: string };
  server_keys: PublicJwk[];
  device_keys: Record<string, PublicJwk[]>;
  checkpoints: { id: number; at: number; last_id: number; hash: string; jws: string }[];
}

export function headerLine(h: Omit<ExportHeader, 'format' | 'version'>): string {
  return `${JSON.stringify({ format: EXPORT_FORMAT, version: EXPORT_VERSION, ...h })}\n`;
}

/** One entry as a line: exactly the hashed fields and the chain hashes. */
export function entryLine(e: ChainedEntry): string {
  return `${JSON.stringify({ id: e.id, at: e.at, event: e.event, device_id: e.deviceId, detail: e.detail, prev_hash: e.prevHash, hash: e.hash })}\n`;
}

export const checkpointJson = (c: CheckpointRecord): ExportHeader['checkpoints'][number] => ({
  id: c.id,
  at: c.at,
  last_id: c.lastId,
  hash: c.hash,
  jws: c.jws,
});

const ENTRY_KEYS = ['at', 'detail', 'device_id', 'event', 'hash', 'id', 'prev_hash'].join(',');

const bad = (message: string): CodedError => new CodedError('E_AUDIT_EXPORT', `not an audit export: ${message}`);

/** Reads an entry line; a line that is not one gives a malformed entry (id: the one expected there). */
function entryOf(text: string, line: number, expectedId: number): SourceEntry {
  const malformed = (why: string): SourceEntry => ({
    id: expectedId,
    at: 0,
    event: '',
    deviceId: null,
    detail: null,
    prevHash: null,
    hash: null,
    line,
    malformed: why,
  });
  let v: unknown;
  try {
    v = JSON.parse(text) as unknown;
  } catch {
    return malformed('the line is not JSON');
  }
  if (!isRecord(v)) return malformed('the line is not a JSON object');
  if (Object.keys(v).sort().join(',') !== ENTRY_KEYS) return malformed(`the line's fields are not exactly ${ENTRY_KEYS}`);
  const { id, at, event, device_id: deviceId, detail, prev_hash: prevHash, hash } = v;
  if (!Number.isSafeInteger(id) || !Number.isSafeInteger(at) || typeof event !== 'string' || (deviceId !== null && typeof deviceId !== 'string')) {
    return malformed('id, at, event or device_id has the wrong type');
  }
  if (typeof prevHash !== 'string' || typeof hash !== 'string') return malformed('prev_hash or hash is not a string');
  return { id: id as number, at: at as number, event, deviceId: deviceId as string | null, detail, prevHash, hash, line };
}

async function keysOf(value: unknown, what: string): Promise<PublicJwk[]> {
  if (!Array.isArray(value)) throw bad(`${what} is not a list of keys`);
  const out: PublicJwk[] = [];
  for (const k of value) {
    try {
      out.push(await parsePublicJwk(k, 'sig'));
    } catch (err) {
      throw bad(`${what}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  return out;
}

/**
 * The AuditSource of an export's text. `serverKeys`: the server keys to trust
 * (a pinned trust.jwks); without them, the export's own.
 */
export async function parseExport(text: string, options: { serverKeys?: readonly PublicJwk[] } = {}): Promise<AuditSource & { header: ExportHeader }> {
  const nl = text.indexOf('\n');
  let header: unknown;
  try {
    header = JSON.parse(nl < 0 ? text : text.slice(0, nl)) as unknown;
  } catch {
    throw bad('its first line is not JSON');
  }
  if (!isRecord(header) || header.format !== EXPORT_FORMAT) throw bad(`its first line is not a ${EXPORT_FORMAT} header`);
  if (header.version !== EXPORT_VERSION) throw bad(`version ${JSON.stringify(header.version)} is not ${EXPORT_VERSION}`);
  const head = header.head;
  if (!isRecord(head) || !Number.isSafeInteger(head.last_id) || typeof head.hash !== 'string') throw bad('the header has no head {last_id, hash}');
  if (typeof header.server_id !== 'string') throw bad('the header has no server_id');
  const serverKeys = options.serverKeys ?? (await keysOf(header.server_keys, 'server_keys'));
  if (!isRecord(header.device_keys)) throw bad('device_keys is not an object');
  const deviceKeys = new Map<string, PublicJwk[]>();
  for (const [device, keys] of Object.entries(header.device_keys)) deviceKeys.set(device, await keysOf(keys, `device_keys of ${device}`));
  if (!Array.isArray(header.checkpoints)) throw bad('checkpoints is not a list');
  const checkpoints: CheckpointRecord[] = header.checkpoints.map((c: unknown, i) => {
    if (!isCheckpointRecord(c)) throw bad(`checkpoint ${i + 1} is not {id, at, last_id, hash, jws}`);
    return { id: c.id, at: c.at, lastId: c.last_id, hash: c.hash, jws: c.jws };
  });
  const chainHead: ChainHead = { lastId: head.last_id as number, hash: head.hash };
  const body = nl < 0 ? '' : text.slice(nl + 1);
  function* entries(): Generator<SourceEntry> {
    let pos = 0;
    let line = 2;
    let lastId = 0;
    while (pos < body.length) {
      let end = body.indexOf('\n', pos);
      // Every line ends with a newline: a last line without one was cut.
      const cut = end < 0;
      if (cut) end = body.length;
      const e = cut
        ? { ...entryOf('', line, lastId + 1), malformed: 'the line is cut (no newline at its end)' }
        : entryOf(body.slice(pos, end), line, lastId + 1);
      yield e;
      lastId = e.id;
      pos = end + 1;
      line++;
    }
  }
  const validHeader: ExportHeader = {
    format: EXPORT_FORMAT,
    version: EXPORT_VERSION,
    exported_at: Number(header.exported_at),
    server_id: String(header.server_id),
    head: { last_id: chainHead.lastId, hash: chainHead.hash },
    server_keys: [...serverKeys],
    device_keys: Object.fromEntries(deviceKeys),
    checkpoints: checkpoints.map(checkpointJson),
  };
  return {
    header: validHeader,
    start: { afterId: 0, hash: AUDIT_GENESIS },
    entries: entries(),
    head: chainHead,
    checkpoints,
    serverKeys,
    serverId: validHeader.server_id,
    deviceKeys: (id) => deviceKeys.get(id) ?? [],
  };
}
