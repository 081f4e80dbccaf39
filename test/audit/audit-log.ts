/**
 * A real audit log for the audit tests: server keys made by keys init, boards
 * with real keys whose acks are sealed (protocol sealAck) and handled by the
 * server's ack path (server/core/inbound.ts handleAck), a board rotating its
 * keys twice (its first acks must still verify), plain entries with unicode,
 * nulls and nesting, and signed checkpoints, the last at the head.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  generateEncryptionKey,
  generateSigningKey,
  sealAck,
  sealReport,
  toJwkSet,
  toPublicJwk,
  type AckStatus,
  type PrivateJwk,
} from '../../protocol/index.js';
import { silentLogger } from '../../lib/log.js';
import type { CommandSender } from '../../server/core/command-sender.js';
import { handleAck, handleReport, type InboundContext } from '../../server/core/inbound.js';
import { initServerKeys, loadServerKeys, type ServerKeys } from '../../server/keys/server-keys.js';
import { makeCheckpoint } from '../../server/audit/registry-audit.js';
import type { Storage } from '../../server/storage/types.js';
import { sendCommand } from '../storage/fixtures.js';

export interface Board {
  id: string;
  signing: PrivateJwk;
  encryption: PrivateJwk;
}

export async function newBoard(id: string): Promise<Board> {
  const [signing, encryption] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
  return { id, signing, encryption };
}

export async function serverKeysIn(dir?: string): Promise<ServerKeys> {
  const d = dir ?? (await mkdtemp(join(tmpdir(), 'audit-keys-')));
  await initServerKeys(join(d, 'keys'));
  return loadServerKeys(join(d, 'keys'));
}

export async function register(storage: Storage, b: Board): Promise<void> {
  await storage.devices.add({
    id: b.id,
    userId: 'alice',
    origin: 'jwks',
    signing: toPublicJwk(b.signing),
    encryption: toPublicJwk(b.encryption),
    state: 'provisioned',
  });
}

/** A command to `b`, acked by the board through the server's ack path; the ack's result as given. */
export async function ackedCommand(
  storage: Storage,
  keys: ServerKeys,
  b: Board,
  action: string,
  status: AckStatus = 'applied',
  result?: Record<string, unknown>,
): Promise<string> {
  const c = await sendCommand(storage, b.id, { action });
  const { token } = await sealAck(
    { deviceId: b.id, serverId: keys.serverId, ref: c.jti, seq: c.seq, status, code: status === 'applied' ? 'OK' : 'E_SENSOR', ...(result ? { result } : {}) },
    { signer: b.signing, recipient: toPublicJwk(keys.encryption) },
  );
  const r = await handleAck(context(storage, keys), b.id, token);
  if (r.kind !== 'ack') throw new Error(`the ack was not recorded: ${JSON.stringify(r)}`);
  return c.jti;
}

const context = (storage: Storage, keys: ServerKeys): InboundContext => ({
  storage,
  keys,
  topicPrefix: 'provision',
  sender: {} as CommandSender,
  log: silentLogger,
});

/** The board reports (connect, position n of run 1) running agent `version`, through the server's report path. */
export async function reportVersion(storage: Storage, keys: ServerKeys, b: Board, version: string, n: number): Promise<void> {
  const { token } = await sealReport(
    {
      deviceId: b.id,
      serverId: keys.serverId,
      reason: n === 1 ? 'connect' : 'interval',
      session: '7d3c9a52-4f1e-4c59-9c1a-2b8e6f0d4a11',
      conn: 1,
      order: { run: 1, n },
      intervalSeconds: 60,
      agentVersion: version,
      nodeVersion: 'v20.19.0',
      lastSeq: 0,
      kids: { sig: b.signing.kid, enc: b.encryption.kid },
      settingsDigest: `sha256:${'0'.repeat(64)}`,
      uptimeSeconds: n,
      selftest: null,
    },
    { signer: b.signing, recipient: toPublicJwk(keys.encryption) },
  );
  const r = await handleReport(context(storage, keys), b.id, token);
  if (r.kind !== 'report' || r.recorded !== 'recorded') throw new Error(`the report was not recorded: ${JSON.stringify(r)}`);
}

/** The board rotates its keys: a rotate command acked applied (signed with its current key) with the new keys. */
export async function rotate(storage: Storage, keys: ServerKeys, b: Board): Promise<void> {
  const next = await newBoard(b.id);
  await ackedCommand(storage, keys, b, 'rotate', 'applied', { keys: toJwkSet([toPublicJwk(next.signing), toPublicJwk(next.encryption)]) });
  b.signing = next.signing;
  b.encryption = next.encryption;
}

export interface AuditLog {
  keys: ServerKeys;
  boards: Board[];
  /** The last entry's id. */
  n: number;
}

/** About 45 entries: devices added, 11 signed acks (one board rotated twice between them), a signed report of a new agent version, plain rows, 2 checkpoints (the last at the head). */
export async function buildAuditLog(storage: Storage, keys?: ServerKeys): Promise<AuditLog> {
  const k = keys ?? (await serverKeysIn());
  const boards = await Promise.all(['b-0', 'b-1', 'b-2'].map(newBoard));
  for (const b of boards) await register(storage, b);
  const [b0, b1, b2] = boards as [Board, Board, Board];
  for (let i = 0; i < 6; i++)
    await storage.audit.append('test.note', i % 2 ? b1.id : null, { i, text: 'ünïcode ✓', nested: { z: [1, null, 'x'], a: i * 1.5 } });
  await ackedCommand(storage, k, b0, 'selftest');
  await ackedCommand(storage, k, b1, 'selftest', 'failed');
  await rotate(storage, k, b0);
  await ackedCommand(storage, k, b0, 'selftest');
  await makeCheckpoint(storage, k, storage.now());
  for (let i = 6; i < 12; i++) await storage.audit.append('test.note', null, { i });
  await rotate(storage, k, b0);
  await ackedCommand(storage, k, b0, 'selftest');
  await ackedCommand(storage, k, b2, 'selftest');
  await ackedCommand(storage, k, b1, 'selftest');
  await ackedCommand(storage, k, b2, 'selftest', 'rejected');
  for (let i = 12; i < 16; i++) await storage.audit.append('test.note', b2.id, { i, empty: {}, list: [] });
  await ackedCommand(storage, k, b1, 'selftest');
  await ackedCommand(storage, k, b0, 'selftest');
  // b-2's agent is updated out of band: its signed report of the new version is kept (device.version.reported).
  await reportVersion(storage, k, b2, '1.0.0', 1);
  await reportVersion(storage, k, b2, '1.1.0', 2);
  await makeCheckpoint(storage, k, storage.now());
  return { keys: k, boards, n: (await storage.audit.head()).lastId };
}
