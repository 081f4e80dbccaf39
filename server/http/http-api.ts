/**
 * The HTTP API of `serve` (node:http or node:https, JSON). Who may call what:
 * server/http/auth.ts (console session cookie, operator API token, legacy
 * DATA/http.token), server/http/auth-roles.ts (the route -> role table; 403
 * E_FORBIDDEN), CSRF for cookie sessions (403 E_CSRF); sessions:
 * server/http/session-routes.ts (POST/GET/DELETE /session).
 *   POST /devices/{id}/commands  {action, user_id?, params?} -> 202 {jti, ...}
 *   GET  /commands/{jti}         the command and its ack status
 *   GET  /devices[?q=&tag=&user_id=&online=&version=&flagged=&sort=&dir=&offset=&limit=]  devices, with presence, reported state
 *                                and last command; GET /devices/{id}/commands|presence; POST /devices/tags (bulk): fleet-routes.ts
 *   GET  /devices/{id}           one device
 *   PUT|DELETE /devices/{id}/tags/{tag}  add / remove a tag;  GET /tags
 *   POST /rollouts               {action, params?, user_id?, selector: {all|user_id|tag|devices}, rate_per_min?,
 *                                 ramp_from_per_min?, ramp_factor?, abort_percent?, abort_min_results?,
 *                                 deliver_within_s?, ttl_s?, concurrency?, dry_run?} -> 201 rollout (dry_run: 200 plan)
 *   GET  /rollouts[?open=1]      rollouts, newest first;  GET /rollouts/{id}[?targets=1]
 *   POST /rollouts/{id}/pause|resume|cancel
 *   POST /rollouts/{id}/retry    {deliver_within_s?, confirm?, dry_run?}: a new rollout over the targets that did not apply
 *   GET  /audit[?device=&rollout=&action=&since=&until=&limit=]  audit rows, oldest first (the newest `limit` that match)
 *   GET  /events               live audit rows and rollout progress, server-sent events: events-stream.ts
 *   GET|POST /enrollment/tokens, DELETE /enrollment/tokens/{id}, GET /enrollment/pending: enrollment-routes.ts
 *   GET  /releases               agent releases, newest first;  GET /releases/{version}[?arch=]  one version's builds, with manifests
 *   GET  /, /console/...         the browser console's files, no auth (server/http/static-console.ts)
 *   POST|GET|DELETE /session     console login / who / logout (server/http/session-routes.ts)
 *   /operators, /api-tokens      operator accounts and their API tokens, admins only (server/http/admin-routes.ts)
 * An upgrade (POST /devices/{id}/commands, POST /rollouts) names its release at the top level:
 *   {action: 'upgrade', release: '0.3.0', arch?, deadline_s?, allow_downgrade?, mirror?, ...}; each device gets the
 *   manifest of the build for its architecture (the registry's, else `arch`).
 * A rollout of a destructive action (delete) to more than one device needs `"confirm": true` or the device count.
 * Errors are `{"error": {"code", "message"}}` with a 4xx/5xx status.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { ACTIONS, CodedError, isAction, isCodedError, isProtocolError, isRecord, isValidId } from '../../protocol/index.js';
import { userIdText, type CommandSender } from '../core/command-sender.js';
import { RELEASE_ACTIONS, serverAction } from '../core/actions/table.js';
import type { Logger } from '../../lib/log.js';
import type { Storage } from '../storage/types.js';
import { commandView, deviceView } from './record-views.js';
import type { AuditFilter, RolloutRecord, RolloutSelector } from '../storage/records.js';
import { planRollout, startRollout, type RolloutRequest } from '../rollouts/plan.js';
import { planView, rolloutView } from '../rollouts/rollout-views.js';
import { ROLLOUT_CONTROLS } from '../rollouts/controls.js';
import { checkConfirmation } from '../rollouts/confirm.js';
import { planRetry, retryView, startRetry } from '../rollouts/retry.js';
import { planWarnings } from '../rollouts/warnings.js';
import type { ServerKeys } from '../keys/server-keys.js';
import { releaseView } from '../releases/views.js';
import { auditView, parseAuditFilter, type AuditFilterInput } from '../audit-filter.js';
import { eventHubFor, isEventsRoute } from './events-stream.js';
import type { SessionLimits } from '../storage/operator-records.js';
import { Authenticator, checkCsrf, type RequestContext } from './auth.js';
import { checkRole } from './auth-roles.js';
import { LoginLimiter, RateLimitedError } from './auth-rate-limit.js';
import { allow, readJsonBody, readOptionalJsonBody, sendError, sendJson } from './http-io.js';
import { queryValues } from './route-kit.js';
import { setSecurityHeaders } from './security-headers.js';
import { routeApiTokens, routeOperators } from './admin-routes.js';
import type { HttpTls } from './tls-files.js';
import { DEFAULT_CONSOLE_DIR, isConsoleRequest, serveConsole } from './static-console.js';
import { DEFAULT_SESSION_LIMITS, routeSession, type SessionRouteContext } from './session-routes.js';
import { isFleetRoute, routeFleet } from './fleet-routes.js';
import { isEnrollmentRoute, routeEnrollment } from './enrollment-routes.js';

export { MAX_BODY_BYTES } from './http-io.js';
export type { RequestContext } from './auth.js';

export interface HttpApiContext {
  storage: Storage;
  keys: ServerKeys;
  sender: CommandSender;
  /** Told when a rollout was started or its state changed (the engine steps at once). */
  onRolloutChange?: () => void;
  /** The legacy bearer token (DATA/http.token): it authenticates as the admin `http-token`. */
  token: string;
  log: Logger;
  /** Console session limits (serve --session-idle/--session-max); default 30 min idle, 12 h in all. */
  sessions?: SessionLimits;
  /** Serve HTTPS with this certificate and key (serve --http-tls-cert/--http-tls-key): cookies are Secure, the own origin https://. */
  tls?: HttpTls;
  /** The clock of the login rate limit (tests); default Date.now. Sessions use the storage's clock. */
  now?: () => number;
  /** Where the console's built files are (default dist/console). */
  consoleDir?: string;
}

/**
 * The HTTP status of each refusal code the API answers with (any other: 400).
 * Only this layer maps codes to HTTP statuses; a protocol refusal (params or
 * a command that does not check) is always 400.
 */
const HTTP_STATUSES: Readonly<Record<string, number>> = {
  E_UNAUTHORIZED: 401,
  E_LOGIN: 401,
  E_FORBIDDEN: 403,
  E_CSRF: 403,
  E_RATE_LIMITED: 429,
  E_NOT_FOUND: 404,
  E_NO_CONSOLE: 404,
  E_NO_DEVICE: 404,
  E_NO_COMMAND: 404,
  E_NO_ROLLOUT: 404,
  E_NO_RELEASE: 404,
  E_NO_OPERATOR: 404,
  E_NO_OPERATOR_TOKEN: 404,
  E_OPERATOR_EXISTS: 409,
  E_LAST_ADMIN: 409,
  E_NO_TOKEN: 404,
  E_ARCH_UNKNOWN: 409,
  E_ROLLOUT_STATE: 409,
  E_METHOD: 405,
  E_NO_KEY: 409,
  E_DECOMMISSIONED: 409,
  E_TOO_LARGE: 413,
  E_CONTENT_TYPE: 415,
  E_STORAGE_UNAVAILABLE: 503,
};

function httpStatusOf(err: CodedError): number {
  return isProtocolError(err) ? 400 : (HTTP_STATUSES[err.code] ?? 400);
}

export function createHttpApi(ctx: HttpApiContext): Server {
  const tls = ctx.tls !== undefined;
  const authenticator = new Authenticator(ctx.storage, ctx.token);
  const sessions: SessionRouteContext = {
    storage: ctx.storage,
    authenticator,
    limiter: new LoginLimiter(ctx.now),
    limits: ctx.sessions ?? DEFAULT_SESSION_LIMITS,
    tls,
  };
  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    setSecurityHeaders(res, { tls });
    void route(ctx, sessions, req, res).catch((err: unknown) => {
      if (err instanceof RateLimitedError) res.setHeader('Retry-After', String(err.retryAfterS));
      if (isCodedError(err)) return sendError(res, httpStatusOf(err), err.code, err.message);
      ctx.log.error('http.error', { reason: err instanceof Error ? err.message : String(err) });
      return sendError(res, 500, 'E_INTERNAL', 'internal error');
    });
  };
  const server: Server = ctx.tls ? createHttpsServer({ cert: ctx.tls.cert, key: ctx.tls.key }, handle) : createServer(handle);
  server.requestTimeout = 30_000;
  server.headersTimeout = 10_000;
  return server;
}

async function route(ctx: HttpApiContext, sessions: SessionRouteContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const { url, parts } = parseTarget(req.url);
  const method = req.method ?? 'GET';
  if (isConsoleRequest(parts)) return serveConsole(ctx.consoleDir ?? DEFAULT_CONSOLE_DIR, res, url, parts, method);
  if (parts[0] === 'session' && parts.length === 1) return routeSession(sessions, req, res, method);

  // Everything below needs a principal whose role the table allows (server/http/auth-roles.ts).
  const rc = await sessions.authenticator.authenticate(req);
  if (rc.via === 'session') checkCsrf(req, method, sessions.tls);
  checkRole(rc.principal, method, parts);

  if (isFleetRoute(parts, method)) return routeFleet(ctx, rc.principal.name, req, res, url, parts, method);
  if (parts[0] === 'operators') return routeOperators(ctx.storage, req, res, parts, method, rc);
  if (parts[0] === 'api-tokens') return routeApiTokens(ctx.storage, req, res, url, parts, method, rc);
  if (isEnrollmentRoute(parts)) return routeEnrollment(ctx, rc.principal.name, req, res, url, parts, method);
  if (isEventsRoute(parts)) return eventHubFor(ctx, ctx.storage, { log: ctx.log }).open(req, res, url, method, rc);
  if (parts[0] === 'devices' && parts.length === 4 && parts[2] === 'tags') {
    allow(method, ['PUT', 'DELETE']);
    const id = deviceId(parts[1]);
    const tags =
      method === 'PUT'
        ? await ctx.storage.devices.addTags(id, [parts[3] as string], rc.principal.name)
        : await ctx.storage.devices.removeTags(id, [parts[3] as string], rc.principal.name);
    return sendJson(res, 200, { device_id: id, tags });
  }
  if (parts[0] === 'tags' && parts.length === 1) {
    allow(method, ['GET']);
    return sendJson(res, 200, { tags: await ctx.storage.devices.listTags() });
  }
  if (parts[0] === 'rollouts') return routeRollouts(ctx, req, res, url, parts, method, rc);
  if (parts[0] === 'audit' && parts.length === 1) {
    allow(method, ['GET']);
    return sendJson(res, 200, { audit: (await ctx.storage.audit.query(auditFilterFromQuery(url.searchParams))).map(auditView) });
  }
  if (parts[0] === 'devices' && parts.length === 2) {
    allow(method, ['GET']);
    return sendJson(res, 200, deviceView(await ctx.storage.devices.require(deviceId(parts[1]))));
  }
  if (parts[0] === 'devices' && parts.length === 3 && parts[2] === 'commands') {
    allow(method, ['POST']);
    const id = deviceId(parts[1]);
    const body = await readJsonBody(req);
    if (!isRecord(body)) throw new CodedError('E_BAD_REQUEST', 'the body must be a JSON object {action, user_id, params}');
    const unknown = Object.keys(body).filter((k) => !['action', 'user_id', 'params', 'ttl_s', ...UPGRADE_MEMBERS].includes(k));
    if (unknown.length) throw new CodedError('E_BAD_REQUEST', `unknown member(s): ${unknown.join(', ')}`);
    if (!isAction(body.action)) throw new CodedError('E_ACTION', `action must be one of ${ACTIONS.join(', ')}`);
    // The seed's user ids are numbers: a non-negative integer is taken as its decimal text.
    const userId = userIdText(body.user_id);
    if (userId !== undefined && (typeof userId !== 'string' || userId.length === 0 || userId.length > 128)) {
      throw new CodedError('E_BAD_REQUEST', 'user_id must be a string of 1-128 characters or a non-negative integer');
    }
    if (body.params !== undefined && !isRecord(body.params)) throw new CodedError('E_PARAMS', 'params must be an object');
    if (body.ttl_s !== undefined && (typeof body.ttl_s !== 'number' || !Number.isSafeInteger(body.ttl_s) || body.ttl_s < 1)) {
      throw new CodedError('E_BAD_REQUEST', 'ttl_s must be a positive integer');
    }
    await ctx.storage.devices.require(id);
    // Accepted once sealed and recorded; the publish completes (PUBACK) in the background.
    const command = await ctx.sender.send(
      {
        deviceId: id,
        action: body.action,
        ...(typeof userId === 'string' ? { userId } : {}),
        params: withUpgradeMembers(body, body.params ?? {}),
        ...(typeof body.ttl_s === 'number' ? { ttlSeconds: body.ttl_s } : {}),
      },
      { publish: 'background', via: 'http', by: rc.principal.name },
    );
    res.setHeader('Location', `/commands/${command.jti}`);
    return sendJson(res, 202, { jti: command.jti, device_id: id, action: command.action, seq: command.seq, status: 'accepted' });
  }
  if (parts[0] === 'releases' && parts.length <= 2) {
    allow(method, ['GET']);
    const store = ctx.storage.releases;
    if (parts.length === 1) return sendJson(res, 200, { releases: (await store.list()).map((r) => releaseView(r)) });
    const version = parts[1] as string;
    const arch = url.searchParams.get('arch') ?? undefined;
    const builds = (await store.list({ version })).filter((r) => arch === undefined || r.arch === arch);
    if (builds.length === 0) throw new CodedError('E_NO_RELEASE', `no release ${version}${arch !== undefined ? ` for ${arch}` : ''}`);
    return sendJson(res, 200, { version, builds: builds.map((r) => releaseView(r, { manifest: true })) });
  }
  if (parts[0] === 'commands' && parts.length === 2) {
    allow(method, ['GET']);
    const command = await ctx.storage.commands.get(parts[1] as string);
    if (!command) throw new CodedError('E_NO_COMMAND', `no command with jti ${parts[1]}`);
    return sendJson(res, 200, commandView(command));
  }
  throw new CodedError('E_NOT_FOUND', `no route for ${method} ${url.pathname}`);
}

async function routeRollouts(
  ctx: HttpApiContext,
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  parts: string[],
  method: string,
  rc: RequestContext,
): Promise<void> {
  const store = ctx.storage.rollouts;
  const view = async (r: RolloutRecord): Promise<ReturnType<typeof rolloutView>> => rolloutView(r, await store.counts(r.id));
  if (parts.length === 1) {
    allow(method, ['GET', 'POST']);
    if (method === 'GET') {
      const open = url.searchParams.get('open') === '1';
      const rollouts: ReturnType<typeof rolloutView>[] = [];
      for (const r of await store.list({ unfinished: open })) rollouts.push(await view(r));
      return sendJson(res, 200, { rollouts });
    }
    const body = await readJsonBody(req);
    const { request, dryRun, confirm } = rolloutRequestFromBody(body);
    const plan = await planRollout(ctx.storage, ctx.keys, request);
    const warnings = planWarnings(plan);
    if (dryRun) return sendJson(res, 200, { ...planView(plan), warnings });
    if (plan.summary.targets === 0) throw new CodedError('E_BAD_REQUEST', 'no device matches the selector: nothing to send');
    checkConfirmation(plan.spec.action, plan.summary.targets, confirm, CONFIRM_HOW);
    const r = await startRollout(ctx.storage, plan, { by: rc.principal.name });
    ctx.onRolloutChange?.();
    res.setHeader('Location', `/rollouts/${r.id}`);
    return sendJson(res, 201, { ...(await view(r)), warnings });
  }
  const id = parts[1] as string;
  if (parts.length === 2) {
    allow(method, ['GET']);
    const r = await store.require(id);
    const withTargets = url.searchParams.get('targets') === '1';
    return sendJson(res, 200, rolloutView(r, await store.counts(r.id), withTargets ? await store.targets(r.id) : undefined));
  }
  if (parts.length === 3 && parts[2] === 'retry') {
    allow(method, ['POST']);
    const { deliverWithinMs, dryRun, confirm } = retryRequestFromBody(await readOptionalJsonBody(req));
    const rp = await planRetry(ctx.storage, ctx.keys, id, deliverWithinMs === undefined ? {} : { deliverWithinMs });
    const warnings = planWarnings(rp.plan);
    if (dryRun) return sendJson(res, 200, { ...planView(rp.plan), ...retryView(rp), warnings });
    checkConfirmation(rp.plan.spec.action, rp.plan.summary.targets, confirm, CONFIRM_HOW);
    const r = await startRetry(ctx.storage, rp, rc.principal.name);
    ctx.onRolloutChange?.();
    res.setHeader('Location', `/rollouts/${r.id}`);
    return sendJson(res, 201, { ...(await view(r)), in_flight_left_out: rp.inFlight, removed_left_out: rp.removed, warnings });
  }
  if (parts.length === 3 && (parts[2] === 'pause' || parts[2] === 'resume' || parts[2] === 'cancel')) {
    allow(method, ['POST']);
    const c = ROLLOUT_CONTROLS[parts[2]];
    const r = await store.setState(id, c.from, c.to, `${parts[2]} via the HTTP API`, rc.principal.name);
    ctx.onRolloutChange?.();
    return sendJson(res, 200, await view(r));
  }
  throw new CodedError('E_NOT_FOUND', `no route for ${method} ${url.pathname}`);
}

const AUDIT_PARAMS = ['device', 'rollout', 'action', 'since', 'until', 'limit'] as const;

function auditFilterFromQuery(q: URLSearchParams): AuditFilter {
  const input: AuditFilterInput = queryValues(q, AUDIT_PARAMS);
  return parseAuditFilter(
    input,
    { device: 'device', rollout: 'rollout', action: 'action', since: 'since', until: 'until', limit: 'limit' },
    'E_BAD_REQUEST',
    Date.now(),
  );
}

/** An upgrade's members at the top level of a body (they go into its params). */
const UPGRADE_MEMBERS = ['release', 'arch', 'deadline_s', 'allow_downgrade', 'mirror'];

const ROLLOUT_MEMBERS = [
  'action',
  'params',
  'user_id',
  'selector',
  'rate_per_min',
  'ramp_from_per_min',
  'ramp_factor',
  'abort_percent',
  'abort_min_results',
  'deliver_within_s',
  'ttl_s',
  'concurrency',
  'dry_run',
  'confirm',
  ...UPGRADE_MEMBERS,
];

const CONFIRM_HOW = '"confirm": true (or "confirm": N, the device count) in the body';

/** `confirm`: true, or the device count (a whole number); absent: undefined. */
function confirmFromBody(body: Record<string, unknown>): boolean | number | undefined {
  const c = body.confirm;
  if (c === undefined) return undefined;
  if (c === true || c === false || (typeof c === 'number' && Number.isSafeInteger(c) && c >= 0)) return c;
  throw new CodedError('E_BAD_REQUEST', 'confirm must be true or the number of devices the rollout goes to');
}

function retryRequestFromBody(body: unknown): { deliverWithinMs: number | undefined; dryRun: boolean; confirm: boolean | number | undefined } {
  if (!isRecord(body)) throw new CodedError('E_BAD_REQUEST', 'the body must be a JSON object {deliver_within_s?, confirm?, dry_run?}');
  const unknown = Object.keys(body).filter((k) => !['deliver_within_s', 'confirm', 'dry_run'].includes(k));
  if (unknown.length) throw new CodedError('E_BAD_REQUEST', `unknown member(s): ${unknown.join(', ')}`);
  const within = body.deliver_within_s;
  if (within !== undefined && (typeof within !== 'number' || !Number.isFinite(within)))
    throw new CodedError('E_BAD_REQUEST', 'deliver_within_s must be a number');
  if (body.dry_run !== undefined && typeof body.dry_run !== 'boolean') throw new CodedError('E_BAD_REQUEST', 'dry_run must be true or false');
  return { deliverWithinMs: within === undefined ? undefined : within * 1000, dryRun: body.dry_run === true, confirm: confirmFromBody(body) };
}

function rolloutRequestFromBody(body: unknown): { request: RolloutRequest; dryRun: boolean; confirm: boolean | number | undefined } {
  if (!isRecord(body)) throw new CodedError('E_BAD_REQUEST', 'the body must be a JSON object {action, params, selector, ...}');
  const unknown = Object.keys(body).filter((k) => !ROLLOUT_MEMBERS.includes(k));
  if (unknown.length) throw new CodedError('E_BAD_REQUEST', `unknown member(s): ${unknown.join(', ')}`);
  const sel = body.selector;
  let selector: RolloutSelector;
  if (!isRecord(sel) || Object.keys(sel).length !== 1) {
    throw new CodedError('E_BAD_REQUEST', 'selector must be one of {"all": true}, {"user_id": U}, {"tag": T}, {"devices": [IDS]}');
  }
  if (sel.all === true) selector = { all: true };
  else if (typeof sel.user_id === 'string' || typeof sel.user_id === 'number') selector = { userId: String(userIdText(sel.user_id)) };
  else if (typeof sel.tag === 'string') selector = { tag: sel.tag };
  else if (Array.isArray(sel.devices) && sel.devices.length > 0 && sel.devices.length <= 10_000 && sel.devices.every(isValidId)) {
    selector = { devices: [...new Set(sel.devices as string[])] };
  } else throw new CodedError('E_BAD_REQUEST', 'selector must be one of {"all": true}, {"user_id": U}, {"tag": T}, {"devices": [IDS]}');
  const num = (name: string): number | undefined => {
    const v = body[name];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new CodedError('E_BAD_REQUEST', `${name} must be a number`);
    return v;
  };
  if (body.dry_run !== undefined && typeof body.dry_run !== 'boolean') throw new CodedError('E_BAD_REQUEST', 'dry_run must be true or false');
  const userId = userIdText(body.user_id);
  if (userId !== undefined && typeof userId !== 'string') throw new CodedError('E_BAD_REQUEST', 'user_id must be a string or a non-negative integer');
  const within = num('deliver_within_s');
  const request: RolloutRequest = {
    action: body.action,
    params: withUpgradeMembers(body, body.params ?? {}),
    ...(typeof userId === 'string' ? { userId } : {}),
    selector,
  };
  const set = <K extends keyof RolloutRequest>(k: K, v: RolloutRequest[K] | undefined): void => {
    if (v !== undefined) request[k] = v;
  };
  set('ratePerMin', num('rate_per_min'));
  set('rampFrom', num('ramp_from_per_min'));
  set('rampFactor', num('ramp_factor'));
  set('abortPercent', num('abort_percent'));
  set('abortMin', num('abort_min_results'));
  set('ttlSeconds', num('ttl_s'));
  set('concurrency', num('concurrency'));
  set('deliverWithinMs', within === undefined ? undefined : within * 1000);
  return { request, dryRun: body.dry_run === true, confirm: confirmFromBody(body) };
}

function withUpgradeMembers(body: Record<string, unknown>, params: unknown): unknown {
  const given = UPGRADE_MEMBERS.filter((k) => body[k] !== undefined);
  if (given.length === 0) return params;
  if (!isAction(body.action) || !serverAction(body.action).byRelease)
    throw new CodedError('E_BAD_REQUEST', `${given.join(', ')}: only for action ${RELEASE_ACTIONS.map((a) => `"${a}"`).join(', ')}`);
  if (!isRecord(params)) throw new CodedError('E_PARAMS', 'params must be an object');
  return { ...params, ...Object.fromEntries(given.map((k) => [k, body[k]])) };
}

/** The request target as a URL and its decoded path segments; a malformed one is a 400 (E_BAD_PATH), never a 500. */
function parseTarget(target: string | undefined): { url: URL; parts: string[] } {
  // Origin-form only ("/devices/x?user_id=y"): not "*", not an absolute URL, not "//host/..." (which URL parsing would read as a host).
  if (target === undefined || !target.startsWith('/') || target.startsWith('//')) {
    throw new CodedError('E_BAD_PATH', 'the request target must be a path such as /devices/ID');
  }
  let url: URL;
  try {
    url = new URL(target, 'http://localhost');
  } catch {
    throw new CodedError('E_BAD_PATH', 'the request target is not a valid path');
  }
  try {
    return { url, parts: url.pathname.split('/').filter(Boolean).map(decodeURIComponent) };
  } catch {
    throw new CodedError('E_BAD_PATH', 'the path has a malformed percent-encoding (%XX of valid UTF-8)');
  }
}

function deviceId(value: string | undefined): string {
  if (!isValidId(value)) throw new CodedError('E_BAD_REQUEST', 'invalid device id');
  return value;
}
