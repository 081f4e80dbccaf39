/**
 * Structural checks of compact JWE and JWS strings, done before any crypto:
 * size, shape, and the protected header parsed as a bounded JSON object.
 */
import { ProtocolError } from './errors.js';
import { isRecord } from './guards.js';
import { MAX_HEADER_BYTES } from './limits.js';

const JWE_COMPACT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const JWS_COMPACT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

export type Header = Record<string, unknown>;

/** Bytes or text in, ASCII compact text out; refuses anything over `maxBytes` before decoding it. */
export function toCompactText(input: string | Uint8Array, maxBytes: number): string {
  const size = typeof input === 'string' ? Buffer.byteLength(input, 'utf8') : input.byteLength;
  if (size > maxBytes) throw new ProtocolError('E_TOO_LARGE', `message of ${size} bytes exceeds the cap of ${maxBytes}`);
  if (size === 0) throw new ProtocolError('E_MALFORMED', 'empty message');
  const text = typeof input === 'string' ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength).toString('latin1');
  return text.trim();
}

/** Checks the 5-part compact JWE shape and returns its parsed protected header. */
export function parseJweHeader(token: string): Header {
  if (!JWE_COMPACT.test(token)) throw new ProtocolError('E_MALFORMED', 'not a compact JWE (five base64url parts); plaintext is refused');
  assertCanonicalSegments(token, 'JWE');
  return decodeHeader(token.slice(0, token.indexOf('.')), 'JWE');
}

/** Checks the 3-part compact JWS shape and returns its parsed protected header. */
export function parseJwsHeader(token: string): Header {
  if (!JWS_COMPACT.test(token)) throw new ProtocolError('E_MALFORMED', 'encrypted payload is not a compact JWS');
  assertCanonicalSegments(token, 'JWS');
  return decodeHeader(token.slice(0, token.indexOf('.')), 'JWS');
}

/** Decodes the payload segment of a compact JWS without verifying it (only for the enrollment self-signature). */
export function unverifiedJwsPayload(token: string): unknown {
  const parts = token.split('.');
  return parseJson(Buffer.from(parts[1] ?? '', 'base64url').toString('utf8'), 'JWS payload');
}

/**
 * Every segment must be canonical base64url: the unused low bits of a last
 * character must be zero, so no two encodings of one message both open.
 */
function assertCanonicalSegments(token: string, kind: 'JWE' | 'JWS'): void {
  for (const segment of token.split('.')) {
    if (segment.length % 4 === 1 || Buffer.from(segment, 'base64url').toString('base64url') !== segment) {
      throw new ProtocolError('E_MALFORMED', `${kind} segment is not canonical base64url`);
    }
  }
}

export function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new ProtocolError('E_MALFORMED', `${what} is not valid JSON`);
  }
}

function decodeHeader(segment: string, kind: 'JWE' | 'JWS'): Header {
  if (segment.length > Math.ceil((MAX_HEADER_BYTES * 4) / 3)) {
    throw new ProtocolError('E_MALFORMED', `${kind} protected header exceeds ${MAX_HEADER_BYTES} bytes`);
  }
  const bytes = Buffer.from(segment, 'base64url');
  const text = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
  if (text.includes('\uFFFD')) throw new ProtocolError('E_MALFORMED', `${kind} protected header is not UTF-8`);
  const header = parseJson(text, `${kind} protected header`);
  if (!isRecord(header)) throw new ProtocolError('E_MALFORMED', `${kind} protected header is not a JSON object`);
  return header;
}
