/**
 * Small helpers the console's route files (fleet-routes.ts, enrollment-routes.ts)
 * share: JSON answers, method checks, strict query parsing (unknown parameter or
 * bad value: 400 E_BAD_REQUEST naming it), ids, JSON bodies. Kept apart from
 * http-api.ts (the router) so the route files never import the router.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CodedError, isCodedError, isValidId } from '../../protocol/index.js';

/** The largest JSON body a console route reads. */
export const ROUTE_MAX_BODY_BYTES = 64 * 1024;

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-store' });
  res.end(text);
}

export function allowMethods(method: string, methods: readonly string[]): void {
  if (!methods.includes(method)) throw new CodedError('E_METHOD', `method ${method} not allowed here (allowed: ${methods.join(', ')})`);
}

export function validDeviceId(value: string | undefined): string {
  if (!isValidId(value)) throw new CodedError('E_BAD_REQUEST', 'invalid device id');
  return value;
}

/** A name as an error message quotes it: JSON-quoted, at most 64 characters (query names are hostile input too). */
export const quoted = (s: string): string => JSON.stringify(s.length > 64 ? `${s.slice(0, 64)}...` : s);

/**
 * The query's parameters as one value each; an unknown one or one given twice
 * is E_BAD_REQUEST naming it.
 */
export function queryValues<K extends string>(q: URLSearchParams, known: readonly K[]): Partial<Record<K, string>> {
  const unknown = [...new Set(q.keys())].filter((k) => !(known as readonly string[]).includes(k));
  if (unknown.length) {
    throw new CodedError('E_BAD_REQUEST', `unknown query parameter(s): ${unknown.map(quoted).join(', ')} (known: ${known.join(', ')})`);
  }
  const out: Partial<Record<K, string>> = {};
  for (const k of known) {
    const values = q.getAll(k);
    if (values.length > 1) throw new CodedError('E_BAD_REQUEST', `query parameter ${k} given ${values.length} times`);
    if (values[0] !== undefined) out[k] = values[0];
  }
  return out;
}

/** A whole number in [min, max] from a query value, else E_BAD_REQUEST naming the parameter. */
export function intParam(name: string, value: string | undefined, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d{1,15}$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new CodedError('E_BAD_REQUEST', `query parameter ${name} must be a whole number from ${min} to ${max}`);
  }
  return Number(value);
}

/** `1` or `0` from a query value, else E_BAD_REQUEST naming the parameter. */
export function flagParam(name: string, value: string | undefined): boolean | undefined {
  if (value === undefined) return undefined;
  if (value !== '1' && value !== '0') throw new CodedError('E_BAD_REQUEST', `query parameter ${name} must be 1 or 0`);
  return value === '1';
}

/** One of `choices`, else E_BAD_REQUEST naming the parameter and the choices. */
export function choiceParam<T extends string>(name: string, value: string | undefined, choices: readonly T[]): T | undefined {
  if (value === undefined) return undefined;
  if (!(choices as readonly string[]).includes(value)) throw new CodedError('E_BAD_REQUEST', `query parameter ${name} must be one of ${choices.join(', ')}`);
  return value as T;
}

/** A text of 1..max characters, else E_BAD_REQUEST naming the parameter. */
export function textParam(name: string, value: string | undefined, max: number): string | undefined {
  if (value === undefined) return undefined;
  if (value.length === 0 || value.length > max) throw new CodedError('E_BAD_REQUEST', `query parameter ${name} must be 1 to ${max} characters`);
  return value;
}

/** The request's JSON body (Content-Type application/json, at most ROUTE_MAX_BODY_BYTES). */
export async function readJson(req: IncomingMessage): Promise<unknown> {
  const type = req.headers['content-type'] ?? '';
  if (!/^application\/json\b/i.test(type)) throw new CodedError('E_CONTENT_TYPE', 'send the body as Content-Type: application/json');
  const declared = Number(req.headers['content-length'] ?? '0');
  if (declared > ROUTE_MAX_BODY_BYTES) throw new CodedError('E_TOO_LARGE', `body exceeds ${ROUTE_MAX_BODY_BYTES} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (size > ROUTE_MAX_BODY_BYTES) throw new CodedError('E_TOO_LARGE', `body exceeds ${ROUTE_MAX_BODY_BYTES} bytes`);
      chunks.push(chunk as Buffer);
    }
  } catch (err) {
    if (isCodedError(err)) throw err;
    throw new CodedError('E_BAD_REQUEST', `the request body could not be read: ${err instanceof Error ? err.message : String(err)}`);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch (err) {
    throw new CodedError('E_BAD_JSON', `body is not valid JSON: ${(err as Error).message}`);
  }
}
