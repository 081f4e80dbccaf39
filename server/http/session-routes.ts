/**
 * Console sessions:
 *   POST   /session {name, password} -> 200 {name, role, expires_at, idle_ms} + Set-Cookie psid
 *          (HttpOnly; SameSite=Strict; Path=/; Secure under TLS). Wrong name or password: 401 E_LOGIN,
 *          the same answer in about the same time for an unknown name (a dummy hash is verified).
 *          Rate-limited (server/http/auth-rate-limit.ts): 429 E_RATE_LIMITED + Retry-After.
 *          Needs X-Console: 1 (and its own Origin, when one is sent) like every console change.
 *   GET    /session -> {name, role} of whoever the request authenticates (401 without one)
 *   DELETE /session -> 204, the session ended and its cookie cleared.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CodedError, isRecord } from '../../protocol/index.js';
import { dummyHash, verifyPassword } from '../operators/password.js';
import { OPERATOR_NAME, type SessionLimits } from '../storage/operator-records.js';
import type { Storage } from '../storage/types.js';
import { checkCsrf, cookieValue, SESSION_COOKIE, type Authenticator } from './auth.js';
import type { LoginLimiter } from './auth-rate-limit.js';
import { allow, checkMembers, readJsonBody, sendEmpty, sendJson } from './http-io.js';

export const DEFAULT_SESSION_LIMITS: Readonly<SessionLimits> = { idleMs: 30 * 60_000, absoluteMs: 12 * 3600_000 };

export interface SessionRouteContext {
  storage: Storage;
  authenticator: Authenticator;
  limiter: LoginLimiter;
  limits: SessionLimits;
  tls: boolean;
}

function cookie(value: string, tls: boolean, clear = false): string {
  return `${SESSION_COOKIE}=${value}; HttpOnly; SameSite=Strict; Path=/${clear ? '; Max-Age=0' : ''}${tls ? '; Secure' : ''}`;
}

export async function routeSession(sc: SessionRouteContext, req: IncomingMessage, res: ServerResponse, method: string): Promise<void> {
  allow(method, ['GET', 'POST', 'DELETE']);
  if (method === 'GET') {
    const rc = await sc.authenticator.authenticate(req);
    return sendJson(res, 200, { name: rc.principal.name, role: rc.principal.role });
  }
  checkCsrf(req, method, sc.tls);
  const current = cookieValue(req, SESSION_COOKIE);
  if (method === 'DELETE') {
    if (current) await sc.storage.operators.endSession(current);
    res.setHeader('Set-Cookie', cookie('', sc.tls, true));
    return sendEmpty(res);
  }
  const body = await readJsonBody(req);
  if (!isRecord(body) || typeof body.name !== 'string' || typeof body.password !== 'string') {
    throw new CodedError('E_BAD_REQUEST', 'the body must be a JSON object {name, password} of two strings');
  }
  checkMembers(body, ['name', 'password']);
  const name = body.name.slice(0, 128);
  const address = req.socket.remoteAddress ?? 'unknown';
  sc.limiter.check(name, address);
  const known = OPERATOR_NAME.test(name) ? await sc.storage.operators.get(name) : undefined;
  const hash = known && known.disabledAt === null ? await sc.storage.operators.passwordHash(name) : undefined;
  // An unknown (or disabled) name verifies against a dummy hash: the answer takes as long as for a known one.
  const matches = await verifyPassword(body.password, hash ?? (await dummyHash()));
  if (!matches || hash === undefined) {
    sc.limiter.failed(name, address);
    throw new CodedError('E_LOGIN', 'wrong name or password');
  }
  sc.limiter.succeeded(name);
  let created: { session: string; expiresAt: number };
  try {
    created = await sc.storage.operators.createSession(name, sc.limits);
  } catch (err) {
    // Removed or disabled between the check and now.
    if (err instanceof Error && 'code' in err && err.code === 'E_NO_OPERATOR') throw new CodedError('E_LOGIN', 'wrong name or password');
    throw err;
  }
  if (current) await sc.storage.operators.endSession(current);
  const principal = await sc.storage.operators.get(name);
  res.setHeader('Set-Cookie', cookie(created.session, sc.tls));
  return sendJson(res, 200, {
    name,
    role: principal?.role ?? known?.role,
    expires_at: new Date(created.expiresAt).toISOString(),
    idle_ms: sc.limits.idleMs,
  });
}
