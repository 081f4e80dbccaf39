/**
 * The fleet's read models for the console (issue 24) and scripts:
 *   GET  /devices[?q=&tag=&user_id=&online=1|0&version=&flagged=1|0&sort=id|user|last_seen|version|status&dir=asc|desc&offset=&limit=1..500]
 *        -> {total, offset, limit, devices: [device view + last_command]}; without `limit` every matching device.
 *        Filtered, sorted, counted and paged in the database (DeviceStore.page).
 *   GET  /devices/{id}/commands[?limit=1..500]  -> {device_id, commands: [command view]} newest first
 *   GET  /devices/{id}/presence[?limit=1..500]  -> {device_id, presence, last_seen_at, changes: [{at, presence, reason, session, conn}]} newest first
 *   POST /devices/tags {devices: [ids], add?: [tags], remove?: [tags]}  bulk tagging, one transaction, audited per device with `by`
 * Unknown query parameters, bad values and unknown body members are 400 E_BAD_REQUEST naming them.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CodedError, isRecord, isValidId } from '../../protocol/index.js';
import { presenceOf } from '../core/presence.js';
import type { CommandRecord } from '../storage/records.js';
import { DEVICE_SORTS, type DevicePageQuery, type Storage } from '../storage/types.js';
import { commandStatus, commandView, deviceView } from './record-views.js';
import { choiceParam, flagParam, intParam, queryValues, textParam, validDeviceId } from './route-kit.js';
import { allow, readJsonBody, sendJson } from './http-io.js';

/** The most devices one page answers (`limit`). */
export const MAX_DEVICE_PAGE = 500;
/** The most devices one bulk tagging names. */
export const MAX_BULK_DEVICES = 10_000;

export interface FleetRouteContext {
  storage: Storage;
}

/** Whether routeFleet answers this request (the router's one line). */
export function isFleetRoute(parts: readonly string[], method: string): boolean {
  if (parts[0] !== 'devices') return false;
  if (parts.length === 1) return true;
  if (parts.length === 2) return parts[1] === 'tags' && method === 'POST';
  return parts.length === 3 && (parts[2] === 'presence' || (parts[2] === 'commands' && method === 'GET'));
}

/** Answers a route isFleetRoute accepted; `by` names who asks (audit rows of changes). */
export async function routeFleet(
  ctx: FleetRouteContext,
  by: string,
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  parts: readonly string[],
  method: string,
): Promise<void> {
  if (parts.length === 1) {
    allow(method, ['GET']);
    return listDevices(ctx, res, url);
  }
  if (parts.length === 2) return bulkTags(ctx, by, req, res, url);
  const id = validDeviceId(parts[1]);
  if (parts[2] === 'commands') return deviceCommands(ctx, res, url, id);
  allow(method, ['GET']);
  return devicePresence(ctx, res, url, id);
}

const DEVICE_PARAMS = ['q', 'tag', 'user_id', 'online', 'version', 'flagged', 'sort', 'dir', 'offset', 'limit'] as const;

/** The page query of GET /devices' parameters (E_BAD_REQUEST naming a bad one). */
export function devicePageQuery(search: URLSearchParams, now: number): DevicePageQuery {
  const v = queryValues(search, DEVICE_PARAMS);
  const query: DevicePageQuery = { now };
  if (v.q !== undefined && v.q !== '') query.q = textParam('q', v.q, 256) as string;
  // An empty tag or user_id selects nothing in particular (as before: `?tag=` was no filter).
  if (v.tag) query.tag = v.tag;
  if (v.user_id) query.userId = textParam('user_id', v.user_id, 128) as string;
  const online = flagParam('online', v.online);
  if (online !== undefined) query.online = online;
  if (v.version !== undefined) query.version = v.version === 'none' ? null : (textParam('version', v.version, 64) as string);
  const flagged = flagParam('flagged', v.flagged);
  if (flagged !== undefined) query.flagged = flagged;
  const sort = choiceParam('sort', v.sort, DEVICE_SORTS);
  if (sort !== undefined) query.sort = sort;
  const dir = choiceParam('dir', v.dir, ['asc', 'desc'] as const);
  if (dir !== undefined) query.dir = dir;
  const offset = intParam('offset', v.offset, 0, 1_000_000_000);
  if (offset !== undefined) query.offset = offset;
  const limit = intParam('limit', v.limit, 1, MAX_DEVICE_PAGE);
  if (limit !== undefined) query.limit = limit;
  return query;
}

/** A device's last command as the fleet table shows it. */
export function lastCommandView(c: CommandRecord | null, now: number): Record<string, unknown> | null {
  if (!c) return null;
  const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());
  return { jti: c.jti, action: c.action, status: commandStatus(c, now), code: c.ackCode, created_at: iso(c.createdAt), acked_at: iso(c.ackedAt) };
}

async function listDevices(ctx: FleetRouteContext, res: ServerResponse, url: URL): Promise<void> {
  const now = Date.now();
  const query = devicePageQuery(url.searchParams, now);
  const page = await ctx.storage.devices.page(query);
  return sendJson(res, 200, {
    total: page.total,
    offset: query.offset ?? 0,
    limit: query.limit ?? null,
    devices: page.items.map((i) => ({ ...deviceView(i.device, now), last_command: lastCommandView(i.lastCommand, now) })),
  });
}

async function deviceCommands(ctx: FleetRouteContext, res: ServerResponse, url: URL, id: string): Promise<void> {
  const v = queryValues(url.searchParams, ['limit'] as const);
  const limit = intParam('limit', v.limit, 1, MAX_DEVICE_PAGE) ?? 100;
  await ctx.storage.devices.require(id);
  const now = Date.now();
  const commands = await ctx.storage.commands.list({ deviceId: id, limit });
  return sendJson(res, 200, { device_id: id, commands: commands.map((c) => commandView(c, now)) });
}

async function devicePresence(ctx: FleetRouteContext, res: ServerResponse, url: URL, id: string): Promise<void> {
  const v = queryValues(url.searchParams, ['limit'] as const);
  const limit = intParam('limit', v.limit, 1, MAX_DEVICE_PAGE) ?? 100;
  const device = await ctx.storage.devices.require(id);
  const changes = await ctx.storage.devices.presenceHistory(id, limit);
  const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());
  return sendJson(res, 200, {
    device_id: id,
    presence: presenceOf(device.presence, Date.now()),
    last_seen_at: iso(device.presence.lastSeenAt),
    changes: changes.map((c) => ({ at: iso(c.at), presence: c.presence, reason: c.reason, session: c.session, conn: c.conn })),
  });
}

async function bulkTags(ctx: FleetRouteContext, by: string, req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
  queryValues(url.searchParams, [] as const);
  const body = await readJsonBody(req);
  const shape = 'the body must be a JSON object {devices: [ids], add?: [tags], remove?: [tags]}';
  if (!isRecord(body)) throw new CodedError('E_BAD_REQUEST', shape);
  const unknown = Object.keys(body).filter((k) => !['devices', 'add', 'remove'].includes(k));
  if (unknown.length) throw new CodedError('E_BAD_REQUEST', `unknown member(s): ${unknown.map((k) => JSON.stringify(k.slice(0, 64))).join(', ')}`);
  const devices = body.devices;
  if (!Array.isArray(devices) || devices.length === 0 || devices.length > MAX_BULK_DEVICES) {
    throw new CodedError('E_BAD_REQUEST', `devices must be a list of 1 to ${MAX_BULK_DEVICES} device ids`);
  }
  if (!devices.every(isValidId)) throw new CodedError('E_BAD_REQUEST', 'devices: every member must be a valid device id');
  const tags = (name: 'add' | 'remove'): string[] => {
    const t = body[name];
    if (t === undefined) return [];
    if (!Array.isArray(t) || !t.every((x) => typeof x === 'string') || t.length > 100) {
      throw new CodedError('E_BAD_REQUEST', `${name} must be a list of at most 100 tags`);
    }
    return [...new Set(t as string[])];
  };
  const add = tags('add');
  const remove = tags('remove');
  if (add.length === 0 && remove.length === 0) throw new CodedError('E_BAD_REQUEST', 'name tags to add or remove');
  const both = add.filter((t) => remove.includes(t));
  if (both.length) throw new CodedError('E_BAD_REQUEST', `a tag cannot be both added and removed: ${both.map((t) => JSON.stringify(t)).join(', ')}`);
  const result = await ctx.storage.devices.bulkTags([...new Set(devices as string[])], add, remove, by);
  return sendJson(res, 200, { devices: result.map((r) => ({ device_id: r.deviceId, tags: r.tags })) });
}
