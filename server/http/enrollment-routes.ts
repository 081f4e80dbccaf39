/**
 * Enrollment tokens over HTTP (issue 24; admin once console-auth's roles land):
 *   GET    /enrollment/tokens[?device=ID]   the tokens, newest first: id, device, user, times, status; never their text
 *   POST   /enrollment/tokens {device_id, user_id, ttl_s?}  -> 201 {id, device_id, user_id, token, expires_at}: the text once
 *   DELETE /enrollment/tokens/{id}          revokes an unused token (enroll refuses it: E_TOKEN_REVOKED); audited with `by`
 *   GET    /enrollment/pending              devices bundled (a token issued) and never enrolled
 * As `provision-server token create|list` and `device list --pending` (same checks, same views).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CodedError, isRecord, isValidId } from '../../protocol/index.js';
import { userIdText } from '../core/command-sender.js';
import type { Storage } from '../storage/types.js';
import { tokenView } from './record-views.js';
import { queryValues, validDeviceId } from './route-kit.js';
import { allow, readJsonBody, sendJson } from './http-io.js';

/** A token's lifetime when the request names none (as `token create --ttl`'s default). */
export const DEFAULT_TOKEN_TTL_S = 24 * 3600;
/** The longest lifetime a token may be given. */
export const MAX_TOKEN_TTL_S = 365 * 24 * 3600;

export interface EnrollmentRouteContext {
  storage: Storage;
}

/** Whether routeEnrollment answers this request (the router's one line). */
export function isEnrollmentRoute(parts: readonly string[]): boolean {
  return parts[0] === 'enrollment';
}

export async function routeEnrollment(
  ctx: EnrollmentRouteContext,
  by: string,
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  parts: readonly string[],
  method: string,
): Promise<void> {
  const store = ctx.storage.enrollment;
  if (parts.length === 2 && parts[1] === 'pending') {
    allow(method, ['GET']);
    queryValues(url.searchParams, [] as const);
    return sendJson(res, 200, { pending: (await store.pendingEnrollments()).map(tokenView) });
  }
  if (parts.length === 2 && parts[1] === 'tokens') {
    allow(method, ['GET', 'POST']);
    if (method === 'GET') {
      const v = queryValues(url.searchParams, ['device'] as const);
      const device = v.device === undefined ? undefined : deviceParam(v.device);
      return sendJson(res, 200, { tokens: (await store.listTokens(device === undefined ? {} : { deviceId: device })).map(tokenView) });
    }
    queryValues(url.searchParams, [] as const);
    const { deviceId, userId, ttlS } = tokenRequest(await readJsonBody(req));
    const created = await store.createToken(deviceId, userId, ttlS * 1000, by);
    return sendJson(res, 201, {
      id: created.id,
      device_id: deviceId,
      user_id: userId,
      token: created.token,
      expires_at: new Date(created.expiresAt).toISOString(),
    });
  }
  if (parts.length === 3 && parts[1] === 'tokens') {
    allow(method, ['DELETE']);
    queryValues(url.searchParams, [] as const);
    const id = parts[2] as string;
    if (!/^[0-9a-f]{16}$/.test(id)) throw new CodedError('E_BAD_REQUEST', 'a token id is 16 hex digits (GET /enrollment/tokens lists them)');
    return sendJson(res, 200, tokenView(await store.revokeToken(id, by)));
  }
  throw new CodedError('E_NOT_FOUND', `no route for ${method} ${url.pathname}`);
}

function deviceParam(value: string): string {
  if (!isValidId(value)) throw new CodedError('E_BAD_REQUEST', 'query parameter device must be a device id');
  return value;
}

function tokenRequest(body: unknown): { deviceId: string; userId: string; ttlS: number } {
  if (!isRecord(body)) throw new CodedError('E_BAD_REQUEST', 'the body must be a JSON object {device_id, user_id, ttl_s?}');
  const unknown = Object.keys(body).filter((k) => !['device_id', 'user_id', 'ttl_s'].includes(k));
  if (unknown.length) throw new CodedError('E_BAD_REQUEST', `unknown member(s): ${unknown.map((k) => JSON.stringify(k.slice(0, 64))).join(', ')}`);
  const deviceId = validDeviceId(typeof body.device_id === 'string' ? body.device_id : undefined);
  const userId = userIdText(body.user_id);
  if (typeof userId !== 'string' || userId.length === 0 || userId.length > 128) {
    throw new CodedError('E_BAD_REQUEST', 'user_id must be a string of 1-128 characters or a non-negative integer');
  }
  const ttl = body.ttl_s ?? DEFAULT_TOKEN_TTL_S;
  if (typeof ttl !== 'number' || !Number.isSafeInteger(ttl) || ttl < 60 || ttl > MAX_TOKEN_TTL_S) {
    throw new CodedError('E_BAD_REQUEST', `ttl_s must be a whole number of seconds from 60 to ${MAX_TOKEN_TTL_S}`);
  }
  return { deviceId, userId, ttlS: ttl };
}
