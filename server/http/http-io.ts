/**
 * Reading and answering HTTP requests, shared by the API's route files:
 * JSON bodies (JSON only: E_CONTENT_TYPE, E_TOO_LARGE, E_BAD_JSON), JSON
 * answers and `{"error": {"code", "message"}}` refusals, method checks.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CodedError, isCodedError } from '../../protocol/index.js';

export const MAX_BODY_BYTES = 64 * 1024;

export async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const type = req.headers['content-type'] ?? '';
  if (!/^application\/json\b/i.test(type)) throw new CodedError('E_CONTENT_TYPE', 'send the body as Content-Type: application/json');
  const declared = Number(req.headers['content-length'] ?? '0');
  if (declared > MAX_BODY_BYTES) throw new CodedError('E_TOO_LARGE', `body exceeds ${MAX_BODY_BYTES} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (size > MAX_BODY_BYTES) throw new CodedError('E_TOO_LARGE', `body exceeds ${MAX_BODY_BYTES} bytes`);
      chunks.push(chunk as Buffer);
    }
  } catch (err) {
    // A client that aborts mid-body (or sends a broken chunked encoding) is its own error, not the server's.
    if (isCodedError(err)) throw err;
    throw new CodedError('E_BAD_REQUEST', `the request body could not be read: ${err instanceof Error ? err.message : String(err)}`);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch (err) {
    throw new CodedError('E_BAD_JSON', `body is not valid JSON: ${(err as Error).message}`);
  }
}

/** A JSON body, or `{}` when the request has none (no Content-Type, no length, not chunked). */
export async function readOptionalJsonBody(req: IncomingMessage): Promise<unknown> {
  const empty = req.headers['content-type'] === undefined && req.headers['transfer-encoding'] === undefined && (req.headers['content-length'] ?? '0') === '0';
  return empty ? {} : readJsonBody(req);
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-store' });
  res.end(text);
}

/** 204, no body. */
export function sendEmpty(res: ServerResponse): void {
  res.writeHead(204, { 'Cache-Control': 'no-store' });
  res.end();
}

export function sendError(res: ServerResponse, status: number, code: string, message: string): void {
  if (res.headersSent) return void res.destroy();
  if (status === 401) res.setHeader('WWW-Authenticate', 'Bearer');
  if (status === 413) res.setHeader('Connection', 'close');
  sendJson(res, status, { error: { code, message } });
}

/** E_METHOD (405) unless `method` is one of `methods`. */
export function allow(method: string, methods: readonly string[]): void {
  if (!methods.includes(method)) throw new CodedError('E_METHOD', `method ${method} not allowed here (allowed: ${methods.join(', ')})`);
}

/** E_BAD_REQUEST naming the members of `body` that are not in `known`. */
export function checkMembers(body: Record<string, unknown>, known: readonly string[]): void {
  const unknown = Object.keys(body).filter((k) => !known.includes(k));
  if (unknown.length) throw new CodedError('E_BAD_REQUEST', `unknown member(s): ${unknown.join(', ')}`);
}
