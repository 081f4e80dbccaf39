/** The verified JWS payload: UTF-8 JSON object text. */
import { ProtocolError } from './errors.js';
import { isRecord } from './guards.js';

export function parseJsonObjectPayload(bytes: Uint8Array): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new ProtocolError('E_CLAIMS', 'claims are not UTF-8');
  }
  let value: unknown;
  try {
    value = JSON.parse(text) as unknown;
  } catch {
    throw new ProtocolError('E_CLAIMS', 'claims are not valid JSON');
  }
  if (!isRecord(value)) throw new ProtocolError('E_CLAIMS', 'claims must be a JSON object');
  return value;
}
