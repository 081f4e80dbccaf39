/**
 * Admin routes (the role table gives them to admins only):
 *   GET    /operators                          {operators: [view]}
 *   POST   /operators {name, role, password}   201 view
 *   PATCH  /operators/{name} {role?, disabled?, password?}  200 view (a new password ends its sessions)
 *   DELETE /operators/{name}                   204 (its tokens and sessions with it)
 *   GET    /api-tokens[?operator=]             {tokens: [view]}, newest first
 *   POST   /api-tokens {operator, label, ttl_s?}  201 {id, token, ...view}: the token's text, this once
 *   DELETE /api-tokens/{id}                    204 (revoked)
 * The same checks and codes as `provision-server user` (server/operators/accounts.ts): E_BAD_OPERATOR,
 * E_PASSWORD, E_NO_OPERATOR, E_OPERATOR_EXISTS, E_LAST_ADMIN (the last enabled admin is kept), E_NO_OPERATOR_TOKEN.
 * Views never include a hash; every change is audited by the storage with `by`: the acting principal.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CodedError, isRecord } from '../../protocol/index.js';
import { newOperator, requireOperator, setOperatorPassword } from '../operators/accounts.js';
import { checkPassword } from '../operators/password.js';
import { checkOperatorName, checkOperatorRole, type OperatorRecord, type OperatorTokenRecord } from '../storage/operator-records.js';
import type { Storage } from '../storage/types.js';
import type { RequestContext } from './auth.js';
import { allow, checkMembers, readJsonBody, sendEmpty, sendJson } from './http-io.js';
import { queryValues } from './route-kit.js';

/** An API token lives at most this long when given a ttl (10 years); none: until revoked. */
const MAX_TOKEN_TTL_S = 10 * 366 * 86_400;

const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());

export function operatorView(o: OperatorRecord): Record<string, unknown> {
  return { name: o.name, role: o.role, created_at: iso(o.createdAt), updated_at: iso(o.updatedAt), disabled_at: iso(o.disabledAt) };
}

export function tokenView(t: OperatorTokenRecord): Record<string, unknown> {
  return {
    id: t.id,
    operator: t.operator,
    label: t.label,
    created_at: iso(t.createdAt),
    expires_at: iso(t.expiresAt),
    last_used_at: iso(t.lastUsedAt),
    revoked_at: iso(t.revokedAt),
  };
}

async function jsonObject(req: IncomingMessage, shape: string, known: readonly string[]): Promise<Record<string, unknown>> {
  const body = await readJsonBody(req);
  if (!isRecord(body)) throw new CodedError('E_BAD_REQUEST', `the body must be a JSON object ${shape}`);
  checkMembers(body, known);
  return body;
}

export async function routeOperators(
  storage: Storage,
  req: IncomingMessage,
  res: ServerResponse,
  parts: string[],
  method: string,
  rc: RequestContext,
): Promise<void> {
  const by = rc.principal.name;
  if (parts.length === 1) {
    allow(method, ['GET', 'POST']);
    if (method === 'GET') return sendJson(res, 200, { operators: (await storage.operators.list()).map(operatorView) });
    const body = await jsonObject(req, '{name, role, password}', ['name', 'role', 'password']);
    const created = await storage.operators.add(await newOperator(body.name, body.role, body.password), by);
    res.setHeader('Location', `/operators/${created.name}`);
    return sendJson(res, 201, operatorView(created));
  }
  if (parts.length !== 2) throw new CodedError('E_NOT_FOUND', `no route for ${method} /${parts.join('/')}`);
  const name = parts[1] as string;
  allow(method, ['GET', 'PATCH', 'DELETE']);
  if (method === 'DELETE') {
    await storage.operators.remove(name, by);
    return sendEmpty(res);
  }
  if (method === 'GET') return sendJson(res, 200, operatorView(await requireOperator(storage, name)));
  const body = await jsonObject(req, '{role?, disabled?, password?}', ['role', 'disabled', 'password']);
  if (body.role === undefined && body.disabled === undefined && body.password === undefined) {
    throw new CodedError('E_BAD_REQUEST', 'name at least one of role, disabled, password');
  }
  // Everything is checked before anything changes.
  checkOperatorName(name);
  await requireOperator(storage, name);
  const role = body.role === undefined ? undefined : checkOperatorRole(body.role);
  if (body.disabled !== undefined && typeof body.disabled !== 'boolean') throw new CodedError('E_BAD_REQUEST', 'disabled must be true or false');
  if (body.password !== undefined) {
    if (typeof body.password !== 'string') throw new CodedError('E_PASSWORD', 'the password must be a string');
    checkPassword(body.password);
  }
  // What can be refused for the last admin first, the password last.
  if (role !== undefined) await storage.operators.setRole(name, role, by);
  if (typeof body.disabled === 'boolean') await storage.operators.setDisabled(name, body.disabled, by);
  if (body.password !== undefined) await setOperatorPassword(storage, name, () => Promise.resolve(body.password), by);
  return sendJson(res, 200, operatorView(await requireOperator(storage, name)));
}

export async function routeApiTokens(
  storage: Storage,
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  parts: string[],
  method: string,
  rc: RequestContext,
): Promise<void> {
  const by = rc.principal.name;
  if (parts.length === 1) {
    allow(method, ['GET', 'POST']);
    if (method === 'GET') {
      const { operator } = queryValues(url.searchParams, ['operator'] as const);
      return sendJson(res, 200, { tokens: (await storage.operators.listTokens(operator !== undefined ? { operator } : {})).map(tokenView) });
    }
    const body = await jsonObject(req, '{operator, label, ttl_s?}', ['operator', 'label', 'ttl_s']);
    const operator = checkOperatorName(body.operator);
    if (typeof body.label !== 'string') throw new CodedError('E_BAD_OPERATOR', 'a token label is 1-200 characters without control characters');
    const ttl = body.ttl_s;
    if (ttl !== undefined && (typeof ttl !== 'number' || !Number.isSafeInteger(ttl) || ttl < 1 || ttl > MAX_TOKEN_TTL_S)) {
      throw new CodedError('E_BAD_REQUEST', `ttl_s must be a whole number of seconds from 1 to ${MAX_TOKEN_TTL_S}`);
    }
    const { token, record } = await storage.operators.createToken(operator, body.label, typeof ttl === 'number' ? ttl * 1000 : null, by);
    res.setHeader('Location', `/api-tokens/${record.id}`);
    return sendJson(res, 201, { id: record.id, token, ...tokenView(record) });
  }
  if (parts.length !== 2) throw new CodedError('E_NOT_FOUND', `no route for ${method} /${parts.join('/')}`);
  allow(method, ['DELETE']);
  await storage.operators.revokeToken(parts[1] as string, by);
  return sendEmpty(res);
}
