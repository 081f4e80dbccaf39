/**
 * Who an HTTP request is, in this order:
 *   1. the cookie `psid`: a console session (storage.operators.touchSession,
 *      which also moves its idle deadline);
 *   2. `Authorization: Bearer T`: an operator's API token (authenticateToken),
 *      else the legacy token of DATA/http.token (the principal
 *      `{name: 'http-token', role: 'admin'}`, kept for scripts);
 *   none: 401 E_UNAUTHORIZED.
 * CSRF (checkCsrf): a cookie-authenticated request other than GET/HEAD must
 * carry `X-Console: 1` (a cross-site form cannot set a custom header, and no
 * CORS is ever answered) and, when it has an Origin, the request's own origin;
 * else 403 E_CSRF. Bearer requests are not a browser's ambient authority: no check.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { CodedError } from '../../protocol/index.js';
import type { OperatorPrincipal } from '../storage/operator-records.js';
import type { Storage } from '../storage/types.js';

export const SESSION_COOKIE = 'psid';

/** The principal of the legacy bearer token (DATA/http.token). */
export const LEGACY_PRINCIPAL: Readonly<OperatorPrincipal> = { name: 'http-token', role: 'admin' };

/** Who made a request, and how they proved it: what every handler gets. */
export interface RequestContext {
  principal: OperatorPrincipal;
  via: 'session' | 'token' | 'legacy-token';
  /** The session id (cookie), when `via` is 'session'. */
  session?: string;
}

/** The value of cookie `name` in the request (the first one), if any. */
export function cookieValue(req: IncomingMessage, name: string): string | undefined {
  const header = req.headers.cookie;
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/** The bearer token of the Authorization header; undefined when there is none; E_UNAUTHORIZED when malformed. */
export function bearerToken(req: IncomingMessage): string | undefined {
  const header = req.headers.authorization;
  if (header === undefined) return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (!m) throw new CodedError('E_UNAUTHORIZED', 'malformed Authorization header (Authorization: Bearer TOKEN)');
  return m[1] as string;
}

export class Authenticator {
  readonly #storage: Storage;
  readonly #legacy: Buffer;

  constructor(storage: Storage, legacyToken: string) {
    this.#storage = storage;
    this.#legacy = sha256(legacyToken);
  }

  /** The request's principal (see the file comment); E_UNAUTHORIZED when it has none. */
  async authenticate(req: IncomingMessage): Promise<RequestContext> {
    const session = cookieValue(req, SESSION_COOKIE);
    if (session !== undefined && session.length > 0 && session.length <= 256) {
      const principal = await this.#storage.operators.touchSession(session);
      if (principal) return { principal, via: 'session', session };
    }
    const token = bearerToken(req);
    if (token === undefined) {
      throw new CodedError(
        'E_UNAUTHORIZED',
        session !== undefined ? 'the session has ended: log in again' : 'missing credentials: log in, or send Authorization: Bearer TOKEN',
      );
    }
    if (token.length <= 256) {
      const principal = await this.#storage.operators.authenticateToken(token);
      if (principal) return { principal, via: 'token' };
    }
    if (timingSafeEqual(sha256(token), this.#legacy)) return { principal: { ...LEGACY_PRINCIPAL }, via: 'legacy-token' };
    throw new CodedError('E_UNAUTHORIZED', 'wrong bearer token (unknown, revoked, expired, or its operator is disabled)');
  }
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** The origin the request was made to (scheme and Host header). */
export function ownOrigin(req: IncomingMessage, tls: boolean): string | undefined {
  const host = req.headers.host;
  return host === undefined ? undefined : `${tls ? 'https' : 'http'}://${host}`.toLowerCase();
}

/**
 * E_CSRF unless a state-changing request from a browser session carries
 * `X-Console: 1` and comes from this origin (when it says where it comes from).
 * The router calls it for cookie-authenticated requests and for the login.
 */
export function checkCsrf(req: IncomingMessage, method: string, tls: boolean): void {
  if (method === 'GET' || method === 'HEAD') return;
  if (req.headers['x-console'] !== '1') throw new CodedError('E_CSRF', 'a console request that changes something must carry the header X-Console: 1');
  const origin = req.headers.origin;
  if (origin !== undefined && origin.toLowerCase() !== ownOrigin(req, tls)) {
    throw new CodedError('E_CSRF', `cross-origin request refused (Origin ${origin} is not this server's)`);
  }
}
