/**
 * The audit log's hash chain (issue 25), pure: no I/O. Each audit entry is
 * encoded canonically and hashed with the hash of the entry before it:
 *
 *   hash(entry) = SHA-256( prev_hash (64 lowercase hex) || "\n" || canonical(entry) )   -> lowercase hex
 *   canonical(entry) = canonical JSON of { at, detail, device_id, event, id }
 *
 * Canonical JSON (RFC 8785 style for the values an audit detail holds): object
 * keys sorted by UTF-16 code units, no whitespace, strings and numbers as
 * JSON.stringify writes them; non-finite numbers, undefined, functions, bigints
 * and other non-JSON values are refused (E_AUDIT_CANONICAL). `detail` is the
 * value as stored (the parse of its JSON text), so a verifier holding only an
 * export recomputes the same bytes. The first entry's prev_hash is
 * AUDIT_GENESIS.
 */
import { createHash } from 'node:crypto';
import { CodedError } from '../../protocol/index.js';

/** prev_hash of the first entry (and the head of an empty chain): SHA-256 of a fixed label. */
export const AUDIT_GENESIS = createHash('sha256').update('provision-server audit chain v1').digest('hex');

/** One entry as it is hashed: the audit row's columns (detail parsed). */
export interface ChainEntry {
  id: number;
  at: number;
  event: string;
  deviceId: string | null;
  detail: unknown;
}

/** The canonical JSON text of a JSON value (see the module comment). */
export function canonicalJson(value: unknown): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'string':
      return JSON.stringify(value);
    case 'number':
      if (!Number.isFinite(value)) throw new CodedError('E_AUDIT_CANONICAL', `an audit value is not a finite number: ${String(value)}`);
      return JSON.stringify(value);
    case 'object': {
      if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
      const proto = Object.getPrototypeOf(value) as unknown;
      if (proto !== Object.prototype && proto !== null) throw new CodedError('E_AUDIT_CANONICAL', 'an audit value is not a plain JSON object');
      const obj = value as Record<string, unknown>;
      const keys = Object.keys(obj).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`;
    }
    default:
      throw new CodedError('E_AUDIT_CANONICAL', `an audit value of type ${typeof value} is not JSON`);
  }
}

/** The bytes hashed for an entry (after prev_hash and a newline). */
export function canonicalEntry(e: ChainEntry): string {
  return canonicalJson({ id: e.id, at: e.at, event: e.event, device_id: e.deviceId, detail: e.detail });
}

const HEX64 = /^[0-9a-f]{64}$/;

/** The hash of `entry` chained after `prevHash` (64 lowercase hex). */
export function chainHash(prevHash: string, entry: ChainEntry): string {
  if (!HEX64.test(prevHash)) throw new CodedError('E_AUDIT_CANONICAL', 'a previous audit hash is not 64 lowercase hex digits');
  return createHash('sha256').update(prevHash).update('\n').update(canonicalEntry(entry)).digest('hex');
}

/** A stored entry with its chain columns (a row as a verifier reads it). */
export interface ChainedEntry extends ChainEntry {
  prevHash: string | null;
  hash: string | null;
  /** Why the row could not be read as an entry (its detail is not JSON, a line of an export is not one): it breaks the chain here. */
  malformed?: string;
}

/** Why an entry breaks the chain. */
export type ChainBreakReason =
  /** its prev_hash is not the hash of the entry before it (an entry removed, reordered or inserted before it, or its predecessor's hash rewritten). */
  | 'link'
  /** its stored hash is not the hash of its content (the entry was edited). */
  | 'hash'
  /** it has no chain columns. */
  | 'missing'
  /** its id is not above the previous entry's. */
  | 'order'
  /** it could not be read (a detail that is not JSON, an export line that is not an entry). */
  | 'malformed';

export interface ChainBreak {
  id: number;
  reason: ChainBreakReason;
  expected: string | null;
  found: string | null;
}

/**
 * Checks entries in id order, the first one chained after `prevHash`; returns
 * the first break, or undefined. Incremental: feed batches through one Checker.
 */
export class ChainChecker {
  #prev: string;
  #lastId = -Infinity;
  checked = 0;

  constructor(prevHash: string = AUDIT_GENESIS) {
    this.#prev = prevHash;
  }

  /** The hash of the last entry checked (the start hash before any). */
  get head(): string {
    return this.#prev;
  }

  check(e: ChainedEntry): ChainBreak | undefined {
    if (e.malformed !== undefined) return { id: e.id, reason: 'malformed', expected: null, found: e.malformed };
    if (e.id <= this.#lastId) return { id: e.id, reason: 'order', expected: null, found: null };
    if (e.prevHash === null || e.hash === null) return { id: e.id, reason: 'missing', expected: this.#prev, found: e.prevHash };
    if (e.prevHash !== this.#prev) return { id: e.id, reason: 'link', expected: this.#prev, found: e.prevHash };
    let actual: string;
    try {
      actual = chainHash(e.prevHash, e);
    } catch {
      return { id: e.id, reason: 'hash', expected: null, found: e.hash };
    }
    if (actual !== e.hash) return { id: e.id, reason: 'hash', expected: actual, found: e.hash };
    this.#prev = e.hash;
    this.#lastId = e.id;
    this.checked++;
    return undefined;
  }
}

/** The chain head a registry keeps (audit_head): the last entry's id and hash (0 and AUDIT_GENESIS: empty). */
export interface ChainHead {
  lastId: number;
  hash: string;
}

/** What verifyChain found: how many entries were checked, the hash after the last, and the first break, if any. */
export interface ChainVerification {
  checked: number;
  /** The id and hash of the last entry checked (from - 1 or 0 and the start hash when none). */
  last: { id: number; hash: string };
  /** The first entry that breaks the chain; `reason: 'head'` (id: the head's last_id): the stored head is not the last entry (entries removed at the end). */
  broken?: ChainBreak | { id: number; reason: 'head'; expected: string | null; found: string | null };
}

/** How verifyEntries reads a registry's audit (both backends). */
export interface ChainReader {
  /** The stored hash of the newest entry with id < `id` (undefined: none). */
  hashBefore(id: number): Promise<string | undefined>;
  /** Up to `limit` entries with afterId < id <= upTo, in id order. */
  batch(afterId: number, upTo: number, limit: number): Promise<ChainedEntry[]>;
  head(): Promise<ChainHead>;
}

const VERIFY_BATCH = 1000;

/** Verifies the entries with from <= id <= to (default: all); with no `to`, also that the stored head is the last entry. */
export async function verifyEntries(reader: ChainReader, from = 1, to?: number): Promise<ChainVerification> {
  const start = (await reader.hashBefore(from)) ?? AUDIT_GENESIS;
  const checker = new ChainChecker(start);
  let lastId = from - 1;
  const upTo = to ?? Number.MAX_SAFE_INTEGER;
  for (;;) {
    const rows = await reader.batch(lastId, upTo, VERIFY_BATCH);
    for (const r of rows) {
      const broken = checker.check(r);
      if (broken) return { checked: checker.checked, last: { id: lastId, hash: checker.head }, broken };
      lastId = r.id;
    }
    if (rows.length < VERIFY_BATCH) break;
  }
  const last = { id: Math.max(lastId, 0), hash: checker.head };
  if (to === undefined) {
    const head = await reader.head();
    if (head.lastId !== lastId || head.hash !== checker.head) {
      return { checked: checker.checked, last, broken: { id: head.lastId, reason: 'head', expected: checker.head, found: head.hash } };
    }
  }
  return { checked: checker.checked, last };
}
