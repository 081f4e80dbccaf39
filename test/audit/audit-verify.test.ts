/**
 * Issue 25: the audit verifier. On a real log (boards' signed acks through the
 * server's ack path, a board rotating its keys twice, signed checkpoints):
 *  - it verifies, every signed ack checked (also those signed before two rotations);
 *  - 1,000 random single-byte edits, deletions, reorders and truncations of an
 *    export, and 1,000 of the stored log (SQLite), are each detected and
 *    located at the first entry that differs (a cut tail: against the last
 *    checkpoint, or the head);
 *  - a forged ack (a valid JWS signed by another board's key), a payload that
 *    does not match its row, a forged signed report of a new agent version, and a checkpoint with a bad signature are found.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import jose from 'node-jose';
import { asJoseKey, SIGNING_ALG, toPublicJwk } from '../../protocol/index.js';
import { chainHash } from '../../server/audit/chain.js';
import { parseExport } from '../../server/audit/export-format.js';
import { verifyRegistry, writeExport } from '../../server/audit/registry-audit.js';
import { verifyAudit, type AuditReport } from '../../server/audit/verify.js';
import { openSqliteStorage, type SqliteStorage } from '../../server/storage/sqlite/index.js';
import { buildAuditLog, newBoard, type AuditLog } from './audit-log.js';

/** A seeded PRNG (mulberry32): the same 1,000 cases every run; the seed is in each failure message. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const SEED = Number(process.env.AUDIT_TAMPER_SEED ?? 25);
const TRIALS = 1000;

/** A JWS over `payload` signed with `key` (as a board signs its ack). */
async function signJws(payload: Record<string, unknown>, key: Parameters<typeof asJoseKey>[0]): Promise<string> {
  const k = await asJoseKey(key);
  return String(
    await jose.JWS.createSign({ format: 'compact', fields: { alg: SIGNING_ALG, kid: key.kid, typ: 'JWT' } }, k)
      .update(JSON.stringify(payload))
      .final(),
  );
}

describe('audit verify (issue 25)', function () {
  this.timeout(180_000);
  let dir: string;
  let storage: SqliteStorage;
  let log: AuditLog;
  let exportText: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'audit-verify-'));
    storage = openSqliteStorage(join(dir, 'registry.sqlite'), { create: true });
    log = await buildAuditLog(storage);
    await writeExport(storage, log.keys, join(dir, 'audit.jsonl'), Date.now());
    exportText = await readFile(join(dir, 'audit.jsonl'), 'utf8');
    // The tests below tamper with the stored rows as someone with the file would: the append-only triggers off, and the
    // expression index that refuses a detail that is not JSON dropped (test only).
    storage.db.exec('DROP TRIGGER audit_append_only_update; DROP TRIGGER audit_append_only_delete; DROP INDEX audit_rollout');
  });
  after(async () => {
    await storage?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('the untouched log verifies, stored and exported: every signed ack, before and after two key rotations, and both checkpoints', async () => {
    const stored = await verifyRegistry(storage, log.keys);
    expect(stored.broken, JSON.stringify(stored.broken)).to.equal(undefined);
    expect(stored).to.deep.include({ entries: log.n, first: 1 });
    expect(stored.acks).to.deep.equal({ verified: 11, unsigned: 0, devices: 3 });
    expect(stored.reports).to.deep.equal({ verified: 2 }); // b-2's first report (online: device.presence) and its new version
    expect(stored.checkpoints.verified).to.equal(2);
    expect(stored.checkpoints.last?.lastId).to.equal(log.n);
    const exported = await verifyAudit(await parseExport(exportText));
    expect(exported.broken, JSON.stringify(exported.broken)).to.equal(undefined);
    expect(exported.last).to.deep.equal(stored.last);
    // The ack rows hold the board's JWS verbatim; the export's lines are exactly the hashed fields and the chain hashes.
    const acks = exportText
      .split('\n')
      .slice(1, -1)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((e) => e.event === 'command.ack');
    expect(acks).to.have.length(11);
    for (const a of acks) {
      expect(Object.keys(a).sort()).to.deep.equal(['at', 'detail', 'device_id', 'event', 'hash', 'id', 'prev_hash']);
      expect((a.detail as Record<string, unknown>).ack_jws).to.match(/^[\w-]+\.[\w-]+\.[\w-]+$/);
    }
  });

  it(`1,000 random single-byte edits, deletions, reorders and truncations of an export are each detected at the first line that differs (seed ${SEED})`, async () => {
    const lines = exportText
      .split('\n')
      .slice(0, -1)
      .map((l) => `${l}\n`); // [header, entry 1, ..., entry n]
    const n = lines.length - 1;
    const rnd = prng(SEED);
    const pick = (lo: number, hi: number): number => lo + Math.floor(rnd() * (hi - lo + 1));
    const seen: Record<string, number> = {};
    for (let t = 0; t < TRIALS; t++) {
      const kind = (['edit', 'delete', 'reorder', 'truncate'] as const)[t % 4] as string;
      const out = [...lines];
      let what: string;
      if (kind === 'edit') {
        const l = pick(1, n);
        const bytes = Buffer.from(out[l] as string, 'utf8');
        const at = pick(0, bytes.length - 1);
        let b = pick(0x20, 0x7e);
        if (b === bytes[at]) b = b === 0x7e ? 0x20 : b + 1;
        bytes[at] = b;
        out[l] = bytes.toString('utf8'); // as the verifier reads the file (an edit inside a multi-byte character: U+FFFD)
        what = `byte ${at} of entry line ${l + 1} -> ${String.fromCharCode(b)}`;
      } else if (kind === 'delete') {
        const l = pick(1, n);
        out.splice(l, 1);
        what = `entry line ${l + 1} deleted`;
      } else if (kind === 'reorder') {
        const l = pick(1, n - 1);
        const m = pick(l + 1, n);
        [out[l], out[m]] = [out[m] as string, out[l] as string];
        what = `entry lines ${l + 1} and ${m + 1} swapped`;
      } else {
        // Cut the text in the entries: every other time at a line's start, else anywhere.
        const body = out.join('');
        const start = (out[0] as string).length;
        const cut = t % 8 === 3 ? out.slice(0, pick(1, n)).join('').length : pick(start, body.length - 1);
        out.splice(0, out.length, body.slice(0, cut));
        what = `cut at byte ${cut} of ${body.length}`;
      }
      const text = out.join('');
      const tampered = text.split('\n');
      const original = exportText.split('\n');
      // The first line that differs (1-based), or none: only whole lines at the end are gone.
      let first = 0;
      for (let i = 0; i < tampered.length; i++) {
        if (tampered[i] !== original[i] && !(i === tampered.length - 1 && tampered[i] === '')) {
          first = i + 1;
          break;
        }
      }
      // A last line that lost only its newline is cut too.
      if (first === 0 && tampered.at(-1) !== '') first = tampered.length;
      const report: AuditReport = await verifyAudit(await parseExport(text));
      const b = report.broken;
      expect(b, `trial ${t} (${what}): not detected`).to.not.equal(undefined);
      if (first > 0) {
        expect(b?.line, `trial ${t} (${what}): ${JSON.stringify(b)}`).to.equal(first);
      } else {
        // Whole lines cut at the end: the first missing entry, found against the head and the last checkpoint.
        const kept = tampered.length - 2; // header and the empty string after the last newline
        expect(b, `trial ${t} (${what})`).to.deep.include({ id: kept + 1 });
        expect(['truncated', 'head']).to.include(b?.reason);
      }
      seen[`${kind}:${b?.reason}`] = (seen[`${kind}:${b?.reason}`] ?? 0) + 1;
    }
    // Every kind of break was exercised.
    for (const k of ['edit:hash', 'edit:malformed', 'delete:missing', 'reorder:missing', 'truncate:malformed', 'truncate:truncated']) {
      expect(seen[k], `${k} in ${JSON.stringify(seen)}`).to.be.above(0);
    }
  });

  it(`1,000 random single-byte edits, deletions, reorders and truncations of the stored log (SQLite) are each detected at the entry (seed ${SEED + 1})`, async () => {
    const db = storage.db;
    type Row = { id: number; at: number; event: string; device_id: string | null; detail: string; prev_hash: string; hash: string };
    const rows = db.prepare('SELECT * FROM audit ORDER BY id').all() as Row[];
    const head = db.prepare('SELECT last_id, hash FROM audit_head').get() as { last_id: number; hash: string };
    const n = rows.length;
    const rnd = prng(SEED + 1);
    const pick = (lo: number, hi: number): number => lo + Math.floor(rnd() * (hi - lo + 1));
    const set = db.prepare('UPDATE audit SET at = ?, event = ?, device_id = ?, detail = ?, prev_hash = ?, hash = ? WHERE id = ?');
    const seen: Record<string, number> = {};
    for (let t = 0; t < TRIALS; t++) {
      const kind = (['edit', 'delete', 'reorder', 'truncate'] as const)[t % 4] as string;
      let expected: number;
      let what: string;
      db.exec('BEGIN');
      try {
        if (kind === 'edit') {
          const r = { ...(rows[pick(0, n - 1)] as Row) };
          const cols = (['detail', 'event', 'prev_hash', 'hash', 'at', ...(r.device_id !== null ? ['device_id'] : [])] as const).slice();
          const col = cols[pick(0, cols.length - 1)] as 'detail' | 'event' | 'prev_hash' | 'hash' | 'at' | 'device_id';
          const text = String(r[col]);
          const at = pick(0, text.length - 1);
          let c = pick(0x20, 0x7e);
          if (c === text.charCodeAt(at)) c = c === 0x7e ? 0x20 : c + 1;
          if (col === 'at') c = 0x30 + ((Number(text[at]) + pick(1, 9)) % 10); // a digit for a digit
          const edited = text.slice(0, at) + String.fromCharCode(c) + text.slice(at + 1);
          const next = { ...r, [col]: col === 'at' ? Number(edited) : edited };
          set.run(next.at, next.event, next.device_id, next.detail, next.prev_hash, next.hash, r.id);
          expected = r.id;
          what = `${col} of entry ${r.id}: char ${at} -> ${String.fromCharCode(c)}`;
        } else if (kind === 'delete') {
          const id = pick(1, n);
          db.prepare('DELETE FROM audit WHERE id = ?').run(id);
          expected = id;
          what = `entry ${id} deleted`;
        } else if (kind === 'reorder') {
          const a = rows[pick(0, n - 2)] as Row;
          const b = rows[pick(a.id, n - 1)] as Row;
          set.run(b.at, b.event, b.device_id, b.detail, b.prev_hash, b.hash, a.id);
          set.run(a.at, a.event, a.device_id, a.detail, a.prev_hash, a.hash, b.id);
          expected = a.id;
          what = `entries ${a.id} and ${b.id} swapped`;
        } else {
          const keep = pick(0, n - 1);
          db.prepare('DELETE FROM audit WHERE id > ?').run(keep);
          // Half the time the head is rewritten too (as a thorough attacker would): the last checkpoint still tells.
          if (t % 8 === 3) db.prepare('UPDATE audit_head SET last_id = ?, hash = ?').run(keep, keep === 0 ? head.hash : (rows[keep - 1] as Row).hash);
          expected = keep + 1;
          what = `entries after ${keep} cut${t % 8 === 3 ? ', head rewritten' : ''}`;
        }
        const report = await verifyRegistry(storage, log.keys);
        const b = report.broken;
        expect(b, `trial ${t} (${what}): not detected`).to.not.equal(undefined);
        expect(b?.id, `trial ${t} (${what}): ${JSON.stringify(b)}`).to.equal(expected);
        seen[`${kind}:${b?.reason}`] = (seen[`${kind}:${b?.reason}`] ?? 0) + 1;
      } finally {
        db.exec('ROLLBACK');
      }
    }
    for (const k of ['edit:hash', 'edit:link', 'edit:malformed', 'delete:missing', 'reorder:link', 'truncate:truncated']) {
      expect(seen[k], `${k} in ${JSON.stringify(seen)}`).to.be.above(0);
    }
    // Untouched after the rollbacks.
    expect((await verifyRegistry(storage, log.keys)).broken).to.equal(undefined);
  });

  /** Replaces entry `id`'s detail with `detail`, its hash and the chain after it recomputed (an attacker with write access and no keys). */
  function rewriteFrom(id: number, detail: Record<string, unknown>): void {
    const db = storage.db;
    const rows = db.prepare('SELECT * FROM audit WHERE id >= ? ORDER BY id').all(id) as {
      id: number;
      at: number;
      event: string;
      device_id: string | null;
      detail: string;
      prev_hash: string;
    }[];
    let prev = (rows[0] as { prev_hash: string }).prev_hash;
    for (const r of rows) {
      const d = r.id === id ? JSON.stringify(detail) : r.detail;
      const hash = chainHash(prev, { id: r.id, at: r.at, event: r.event, deviceId: r.device_id, detail: JSON.parse(d) as unknown });
      db.prepare('UPDATE audit SET detail = ?, prev_hash = ?, hash = ? WHERE id = ?').run(d, prev, hash, r.id);
      prev = hash;
    }
    db.prepare('UPDATE audit_head SET hash = ?').run(prev);
  }

  it('a forged ack (a valid JWS signed by another board) and an ack whose row says otherwise than its JWS are found at their entry; the re-chained log still fails its checkpoint', async () => {
    const db = storage.db;
    const row = db.prepare("SELECT id, device_id, detail FROM audit WHERE event = 'command.ack' AND device_id = 'b-1' ORDER BY id DESC LIMIT 1").get() as {
      id: number;
      device_id: string;
      detail: string;
    };
    const detail = JSON.parse(row.detail) as Record<string, unknown>;
    // The attacker holds b-2's key (another board's) and signs "applied" for b-1's command.
    const b2 = log.boards[2] as { signing: Parameters<typeof asJoseKey>[0] };
    const forged = await signJws(
      { iss: 'b-1', aud: log.keys.serverId, iat: 1, jti: detail.ack_jti, ref: detail.jti, seq: 0, status: 'applied', code: 'OK', detail: '' },
      b2.signing,
    );
    db.exec('BEGIN');
    try {
      rewriteFrom(row.id, { ...detail, status: 'applied', code: 'OK', ack_jws: forged });
      // Without the checkpoints (rewritten to match, or not kept), the board's signature alone tells.
      const noCheckpoints = await verifyAudit({ ...(await sourceOf()), checkpoints: [] });
      expect(noCheckpoints.broken).to.deep.include({ code: 'E_AUDIT_ACK', id: row.id, event: 'command.ack', reason: 'signature' });
      expect(noCheckpoints.broken?.message).to.match(/does not verify with any key registered for b-1/);
      const withCheckpoints = await verifyRegistry(storage, log.keys);
      expect(withCheckpoints.broken?.code).to.be.oneOf(['E_AUDIT_ACK', 'E_AUDIT_CHECKPOINT']);
    } finally {
      db.exec('ROLLBACK');
    }
    // A genuine JWS of b-1's (another of its acks) on this row: signed right, says another command.
    const other = db.prepare("SELECT detail FROM audit WHERE event = 'command.ack' AND device_id = 'b-1' ORDER BY id LIMIT 1").get() as { detail: string };
    db.exec('BEGIN');
    try {
      rewriteFrom(row.id, { ...detail, ack_jws: (JSON.parse(other.detail) as { ack_jws: string }).ack_jws });
      const r = await verifyAudit({ ...(await sourceOf()), checkpoints: [] });
      expect(r.broken).to.deep.include({ code: 'E_AUDIT_ACK', id: row.id, reason: 'mismatch' });
      expect(r.broken?.message).to.match(/the signed ack says (ref|jti|status|code)=/);
    } finally {
      db.exec('ROLLBACK');
    }
    // The signed report of a new agent version, forged with another board's key.
    const rep = db.prepare("SELECT id, detail FROM audit WHERE event = 'device.version.reported'").get() as { id: number; detail: string };
    const repDetail = JSON.parse(rep.detail) as Record<string, unknown>;
    const b0 = log.boards[0] as { signing: Parameters<typeof asJoseKey>[0] };
    const forgedReport = await signJws({ iss: 'b-2', aud: log.keys.serverId, jti: repDetail.report_jti, agent_version: repDetail.to }, b0.signing);
    db.exec('BEGIN');
    try {
      rewriteFrom(rep.id, { ...repDetail, report_jws: forgedReport });
      const r = await verifyAudit({ ...(await sourceOf()), checkpoints: [] });
      expect(r.broken).to.deep.include({ code: 'E_AUDIT_REPORT', id: rep.id, event: 'device.version.reported', reason: 'signature' });
    } finally {
      db.exec('ROLLBACK');
    }
    // A presence change whose row says another reason than the board's signed report (an offline turned into a connect).
    const pres = db.prepare("SELECT id, detail FROM audit WHERE event = 'device.presence'").get() as { id: number; detail: string };
    const presDetail = JSON.parse(pres.detail) as Record<string, unknown>;
    expect(presDetail.report_jws, 'the presence row keeps the signed report').to.be.a('string');
    db.exec('BEGIN');
    try {
      rewriteFrom(pres.id, { ...presDetail, report_reason: presDetail.report_reason === 'offline' ? 'connect' : 'offline' });
      const r = await verifyAudit({ ...(await sourceOf()), checkpoints: [] });
      expect(r.broken).to.deep.include({ code: 'E_AUDIT_REPORT', id: pres.id, event: 'device.presence', reason: 'mismatch' });
    } finally {
      db.exec('ROLLBACK');
    }
  });

  /** The stored log as an AuditSource (checkpoints included), through an export. */
  async function sourceOf(): Promise<Awaited<ReturnType<typeof parseExport>>> {
    const file = join(dir, `src-${Date.now()}.jsonl`);
    await writeExport(storage, log.keys, file, Date.now());
    return parseExport(await readFile(file, 'utf8'));
  }

  it('a checkpoint with a bad signature, or signed by another key, is found; one that signed another hash names its entry', async () => {
    const src = await parseExport(exportText);
    const cps = src.checkpoints;
    const last = cps.at(-1);
    if (!last) throw new Error('no checkpoint');
    const [h, p, s] = last.jws.split('.') as [string, string, string];
    const flipped = `${h}.${p}.${s.slice(0, 10)}${s[10] === 'A' ? 'B' : 'A'}${s.slice(11)}`;
    const bad = await verifyAudit({ ...(await parseExport(exportText)), checkpoints: [...cps.slice(0, -1), { ...last, jws: flipped }] });
    expect(bad.broken).to.deep.include({ code: 'E_AUDIT_CHECKPOINT', checkpoint: last.id, reason: 'signature' });
    // Signed by a key that is not the server's (an attacker's).
    const mallory = await newBoard('mallory');
    const payload = JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as Record<string, unknown>;
    const k = await asJoseKey(mallory.signing);
    const other = String(
      await jose.JWS.createSign({ format: 'compact', fields: { alg: SIGNING_ALG, kid: mallory.signing.kid, typ: 'provision-audit-checkpoint+jwt' } }, k)
        .update(JSON.stringify(payload))
        .final(),
    );
    const foreign = await verifyAudit({ ...(await parseExport(exportText)), checkpoints: [{ ...last, jws: other }] });
    expect(foreign.broken).to.deep.include({ code: 'E_AUDIT_CHECKPOINT', reason: 'signature' });
    // The export's own keys replaced by the attacker's: pinned keys (--trust) still refuse it.
    const pinned = await verifyAudit({
      ...(await parseExport(exportText, { serverKeys: [toPublicJwk(log.keys.signing)] })),
      checkpoints: [{ ...last, jws: other }],
    });
    expect(pinned.broken?.code).to.equal('E_AUDIT_CHECKPOINT');
    // The columns say another hash than the one signed.
    const lied = await verifyAudit({ ...(await parseExport(exportText)), checkpoints: [{ ...last, hash: 'f'.repeat(64) }] });
    expect(lied.broken).to.deep.include({ code: 'E_AUDIT_CHECKPOINT', reason: 'signature' });
    // The export's server_id edited: its checkpoints were issued by another.
    const renamed = await verifyAudit(await parseExport(exportText.replace(`"server_id":"${log.keys.serverId}"`, '"server_id":"another-server"')));
    expect(renamed.broken).to.deep.include({ code: 'E_AUDIT_CHECKPOINT', reason: 'signature' });
    expect(renamed.broken?.message).to.match(/issued by "provision-server", not another-server/);
  });
});
