/**
 * Release transfer over MQTT: the board asks for its artifact on its `fetch`
 * topic, the server answers with frames on the board's `chunk` topic. Both are
 * QoS 0: a broker never queues megabytes for an offline board, and the board
 * asks again for what did not come. Nothing here is secret or trusted: every
 * chunk is checked against the signed manifest (release.ts) before the board
 * writes it, so integrity never depends on the transport.
 */
import { ProtocolError } from './errors.js';
import { isRecord } from './guards.js';
import { parseJson } from './compact.js';

/** Most chunks one fetch request may ask for. */
export const MAX_FETCH_CHUNKS = 16;
/** Largest fetch request accepted. */
export const MAX_FETCH_BYTES = 256;
const HEX64 = /^[0-9a-f]{64}$/;
const MAGIC = Buffer.from('SAC1', 'ascii');
/** magic (4) + artifact SHA-256 (32) + kind (1) + number (4). */
export const CHUNK_FRAME_HEADER_BYTES = 41;

export type FetchRequest = { v: 1; sha256: string; index: true } | { v: 1; sha256: string; from: number; count: number };

export function encodeFetch(req: FetchRequest): Buffer {
  return Buffer.from(JSON.stringify(parseFetchValue(req)), 'utf8');
}

/** Parses a fetch request from a board; throws E_TOO_LARGE or E_MALFORMED. */
export function parseFetch(payload: Uint8Array): FetchRequest {
  if (payload.byteLength > MAX_FETCH_BYTES) throw new ProtocolError('E_TOO_LARGE', `fetch request of ${payload.byteLength} bytes exceeds ${MAX_FETCH_BYTES}`);
  return parseFetchValue(parseJson(Buffer.from(payload).toString('utf8'), 'fetch request'));
}

function parseFetchValue(value: unknown): FetchRequest {
  const fail = (why: string): ProtocolError => new ProtocolError('E_MALFORMED', `fetch request: ${why}`);
  if (!isRecord(value)) throw fail('must be a JSON object');
  if (value.v !== 1) throw fail('v must be 1');
  if (typeof value.sha256 !== 'string' || !HEX64.test(value.sha256)) throw fail('sha256 must be 64 lower-case hex digits');
  const keys = Object.keys(value).sort().join(',');
  if (keys === 'index,sha256,v') {
    if (value.index !== true) throw fail('index must be true');
    return { v: 1, sha256: value.sha256, index: true };
  }
  if (keys !== 'count,from,sha256,v') throw fail('must be {v, sha256, index: true} or {v, sha256, from, count}');
  const { from, count } = value;
  if (typeof from !== 'number' || !Number.isSafeInteger(from) || from < 0 || from > 0xffff_ffff) throw fail('from must be a chunk number');
  if (typeof count !== 'number' || !Number.isSafeInteger(count) || count < 1 || count > MAX_FETCH_CHUNKS) throw fail(`count must be 1-${MAX_FETCH_CHUNKS}`);
  return { v: 1, sha256: value.sha256, from, count };
}

export type ChunkFrameKind = 'chunk' | 'index';

export interface ChunkFrame {
  /** SHA-256 (hex) of the artifact the frame belongs to. */
  sha256: string;
  kind: ChunkFrameKind;
  /** Chunk number (0 for the index). */
  number: number;
  data: Buffer;
}

export function encodeChunkFrame(frame: ChunkFrame): Buffer {
  if (!HEX64.test(frame.sha256)) throw new ProtocolError('E_MALFORMED', 'chunk frame: sha256 must be 64 lower-case hex digits');
  if (!Number.isSafeInteger(frame.number) || frame.number < 0 || frame.number > 0xffff_ffff) throw new ProtocolError('E_MALFORMED', 'chunk frame: bad number');
  const head = Buffer.alloc(CHUNK_FRAME_HEADER_BYTES);
  MAGIC.copy(head, 0);
  Buffer.from(frame.sha256, 'hex').copy(head, 4);
  head.writeUInt8(frame.kind === 'index' ? 1 : 0, 36);
  head.writeUInt32BE(frame.number, 37);
  return Buffer.concat([head, frame.data]);
}

/** Parses a frame from the chunk topic; throws E_MALFORMED. The data is a view of `payload`, not a copy. */
export function parseChunkFrame(payload: Buffer): ChunkFrame {
  if (payload.byteLength < CHUNK_FRAME_HEADER_BYTES || !payload.subarray(0, 4).equals(MAGIC)) {
    throw new ProtocolError('E_MALFORMED', 'not a chunk frame');
  }
  const kind = payload.readUInt8(36);
  if (kind !== 0 && kind !== 1) throw new ProtocolError('E_MALFORMED', `chunk frame kind ${kind} is unknown`);
  return {
    sha256: payload.subarray(4, 36).toString('hex'),
    kind: kind === 1 ? 'index' : 'chunk',
    number: payload.readUInt32BE(37),
    data: payload.subarray(CHUNK_FRAME_HEADER_BYTES),
  };
}
