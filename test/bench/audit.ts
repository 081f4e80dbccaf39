/**
 * Bench section `audit` (issue 25): verify an audit log of 100,000 entries
 * (10,000 with --quick), one in ten a `command.ack` carrying its board's ES256
 * JWS (10 boards), with two signed checkpoints: from the SQLite registry
 * (`provision-server audit verify`'s path) and from its export (the standalone
 * verifier's path). Reported in entries/s. The log is written straight into
 * the registry (the chain computed in JavaScript, the JWS signed with
 * node:crypto) so that filling it costs seconds, not the verify figures.
 */
import { createPrivateKey, sign as cryptoSign, randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateEncryptionKey, generateSigningKey, toPublicJwk, type PrivateJwk } from '../../protocol/index.js';
import { AUDIT_GENESIS, chainHash } from '../../server/audit/chain.js';
import { parseExport } from '../../server/audit/export-format.js';
import { makeCheckpoint, verifyRegistry, writeExport } from '../../server/audit/registry-audit.js';
import { verifyAudit } from '../../server/audit/verify.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { serverKeysIn } from '../audit/audit-log.js';

export interface AuditFigures {
  entries: number;
  signed_acks: number;
  fill_s: number;
  /** From the registry (SQLite): chain, checkpoints and every signed ack. */
  registry_verify_s: number;
  registry_entries_per_s: number;
  export_mb: number;
  export_s: number;
  /** From the export file (read, parsed, verified), as provision-audit-verify does. */
  export_verify_s: number;
  export_entries_per_s: number;
}

const b64 = (v: string | Buffer): string => Buffer.from(v).toString('base64url');

/** An ES256 compact JWS over `payload` (node:crypto: as node-jose makes it, faster to fill the log). */
function es256(payload: Record<string, unknown>, key: PrivateJwk): string {
  const input = `${b64(JSON.stringify({ alg: 'ES256', kid: key.kid, typ: 'JWT' }))}.${b64(JSON.stringify(payload))}`;
  const sig = cryptoSign('sha256', Buffer.from(input), {
    key: createPrivateKey({ key: { ...key }, format: 'jwk' }),
    dsaEncoding: 'ieee-p1363',
  });
  return `${input}.${b64(sig)}`;
}

export async function benchAudit(options: { quick: boolean; log: (s: string) => void }): Promise<AuditFigures> {
  const n = options.quick ? 10_000 : 100_000;
  const dir = await mkdtemp(join(tmpdir(), 'bench-audit-'));
  try {
    const keys = await serverKeysIn(dir);
    const storage = openSqliteStorage(join(dir, 'registry.sqlite'), { create: true });
    try {
      const boards = await Promise.all(
        Array.from({ length: 10 }, async (_, i) => ({ id: `bench-${i}`, signing: await generateSigningKey(), encryption: await generateEncryptionKey() })),
      );
      for (const b of boards)
        await storage.devices.add({
          id: b.id,
          userId: 'alice',
          origin: 'jwks',
          signing: toPublicJwk(b.signing),
          encryption: toPublicJwk(b.encryption),
          state: 'provisioned',
        });
      const t0 = performance.now();
      const db = storage.db;
      const head = db.prepare('SELECT last_id, hash FROM audit_head').get() as { last_id: number; hash: string } | undefined;
      let prev = head?.hash ?? AUDIT_GENESIS;
      let id = head?.last_id ?? 0;
      const insert = db.prepare('INSERT INTO audit (id, at, event, device_id, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)');
      let signed = 0;
      const at = Date.now();
      const fill = (count: number): void => {
        db.transaction(() => {
          for (let i = 0; i < count; i++) {
            id++;
            const board = boards[id % boards.length] as (typeof boards)[number];
            let event = 'test.bench';
            let deviceId: string | null = null;
            let detail: Record<string, unknown> = { i: id, note: 'a bench entry', nested: { a: [1, 2, 3] } };
            if (id % 10 === 0) {
              const jti = randomUUID();
              const ackJti = randomUUID();
              const jws = es256(
                { iss: board.id, aud: keys.serverId, iat: 1, jti: ackJti, ref: jti, seq: id, status: 'applied', code: 'OK', detail: '' },
                board.signing,
              );
              event = 'command.ack';
              deviceId = board.id;
              detail = { jti, action: 'selftest', seq: id, status: 'applied', code: 'OK', ack_jti: ackJti, ack_jws: jws };
              signed++;
            }
            const hash = chainHash(prev, { id, at, event, deviceId, detail });
            insert.run(id, at, event, deviceId, JSON.stringify(detail), prev, hash);
            prev = hash;
          }
          db.prepare('UPDATE audit_head SET last_id = ?, hash = ?').run(id, prev);
        })();
      };
      // n entries in all (the device.add rows count), a checkpoint half way and one at the head.
      fill(n / 2 - id);
      await makeCheckpoint(storage, keys, Date.now());
      fill(n - id);
      await makeCheckpoint(storage, keys, Date.now());
      const entries = (await storage.audit.head()).lastId;
      const fillS = (performance.now() - t0) / 1000;
      options.log(`  audit: ${entries} entries (${signed} signed acks) written in ${fillS.toFixed(1)} s; verifying ...`);

      const t1 = performance.now();
      const stored = await verifyRegistry(storage, keys);
      const registryS = (performance.now() - t1) / 1000;
      if (stored.broken || stored.entries !== entries || stored.acks.verified !== signed)
        throw new Error(`the bench log did not verify: ${JSON.stringify(stored.broken ?? stored)}`);

      const file = join(dir, 'audit.jsonl');
      const t2 = performance.now();
      await writeExport(storage, keys, file, Date.now());
      const exportS = (performance.now() - t2) / 1000;
      const t3 = performance.now();
      const text = await readFile(file, 'utf8');
      const exported = await verifyAudit(await parseExport(text));
      const exportVerifyS = (performance.now() - t3) / 1000;
      if (exported.broken || exported.entries !== entries) throw new Error(`the bench export did not verify: ${JSON.stringify(exported.broken ?? exported)}`);
      const r1 = (x: number): number => Math.round(x * 10) / 10;
      return {
        entries,
        signed_acks: signed,
        fill_s: r1(fillS),
        registry_verify_s: Math.round(registryS * 100) / 100,
        registry_entries_per_s: Math.round(entries / registryS),
        export_mb: r1(Buffer.byteLength(text) / 1e6),
        export_s: Math.round(exportS * 100) / 100,
        export_verify_s: Math.round(exportVerifyS * 100) / 100,
        export_entries_per_s: Math.round(entries / exportVerifyS),
      };
    } finally {
      await storage.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
