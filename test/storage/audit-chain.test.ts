/**
 * The audit hash chain (issue 25): the pure encoding (server/storage/audit-chain.ts), and, in the shared
 * storage suite (SQLite and PostgreSQL), appends from two storages at once making one chain, and edits,
 * deletions and a lost tail found by verifyChain at the row they break.
 */
import { createHash } from 'node:crypto';
import { expect } from 'chai';
import { AUDIT_GENESIS, canonicalJson, chainHash, ChainChecker } from '../../server/storage/audit-chain.js';
import { verifyRegistry } from '../../server/audit/registry-audit.js';
import { buildAuditLog } from '../audit/audit-log.js';
import type { Storage } from '../../server/storage/types.js';
import { forEachBackend, type Backend } from './backends.js';
import { addDevice, Clock, rejectsAny } from './fixtures.js';

describe('storage: audit chain encoding', function () {
  it('canonical JSON sorts keys at every level, writes no whitespace and escapes as JSON.stringify', () => {
    expect(canonicalJson({ b: [1, { z: null, a: 'é"\n' }], a: true, c: 1.5e-7 })).to.equal('{"a":true,"b":[1,{"a":"é\\"\\n","z":null}],"c":1.5e-7}');
    expect(canonicalJson({ B: 1, a: 2, _: 3 })).to.equal('{"B":1,"_":3,"a":2}');
  });

  it('refuses what is not JSON: non-finite numbers, undefined, bigint, class instances', () => {
    for (const bad of [NaN, Infinity, undefined, 1n, new Date(0), { x: undefined }]) {
      expect(() => canonicalJson(bad), String(bad))
        .to.throw(/./)
        .with.property('code', 'E_AUDIT_CANONICAL');
    }
  });

  it('hashes prev_hash, a newline and the canonical entry with SHA-256; the genesis is fixed', () => {
    expect(AUDIT_GENESIS).to.equal(createHash('sha256').update('provision-server audit chain v1').digest('hex'));
    const entry = { id: 1, at: 1000, event: 'e.x', deviceId: 'd1', detail: { b: 2, a: 1 } };
    const expected = createHash('sha256').update(`${AUDIT_GENESIS}\n{"at":1000,"detail":{"a":1,"b":2},"device_id":"d1","event":"e.x","id":1}`).digest('hex');
    expect(chainHash(AUDIT_GENESIS, entry)).to.equal(expected);
    // Key order of the detail does not matter; any field does.
    expect(chainHash(AUDIT_GENESIS, { ...entry, detail: { a: 1, b: 2 } })).to.equal(expected);
    for (const changed of [{ id: 2 }, { at: 1001 }, { event: 'e.y' }, { deviceId: null }, { detail: { a: 1, b: 3 } }]) {
      expect(chainHash(AUDIT_GENESIS, { ...entry, ...changed }), JSON.stringify(changed)).to.not.equal(expected);
    }
    expect(() => chainHash('not-hex', entry)).to.throw(/64 lowercase hex/);
  });

  it('the checker names the first entry whose link, hash or order is wrong', () => {
    const e1 = { id: 1, at: 1, event: 'a', deviceId: null, detail: {} };
    const h1 = chainHash(AUDIT_GENESIS, e1);
    const e2 = { id: 2, at: 2, event: 'b', deviceId: null, detail: {} };
    const h2 = chainHash(h1, e2);
    const ok = new ChainChecker();
    expect(ok.check({ ...e1, prevHash: AUDIT_GENESIS, hash: h1 })).to.equal(undefined);
    expect(ok.check({ ...e2, prevHash: h1, hash: h2 })).to.equal(undefined);
    expect(ok.head).to.equal(h2);
    expect(new ChainChecker().check({ ...e2, prevHash: h1, hash: h2 })).to.include({ id: 2, reason: 'link' });
    expect(new ChainChecker().check({ ...e1, event: 'A', prevHash: AUDIT_GENESIS, hash: h1 })).to.include({ id: 1, reason: 'hash' });
    const back = new ChainChecker();
    back.check({ ...e1, prevHash: AUDIT_GENESIS, hash: h1 });
    expect(back.check({ ...e1, prevHash: h1, hash: h1 })).to.include({ id: 1, reason: 'order' });
  });
});

/** SQL that runs `edit` on the audit table with its append-only triggers off (test only). */
async function tamper(b: Backend, s: Storage, edit: string, args: (string | number | null)[] = []): Promise<void> {
  if (b.name === 'sqlite') {
    await b.sql(s, 'DROP TRIGGER IF EXISTS audit_append_only_update');
    await b.sql(s, 'DROP TRIGGER IF EXISTS audit_append_only_delete');
    await b.sql(s, edit, args);
  } else {
    await b.sql(s, 'ALTER TABLE audit DISABLE TRIGGER USER');
    await b.sql(s, edit, args);
    await b.sql(s, 'ALTER TABLE audit ENABLE TRIGGER USER');
  }
}

describe('storage: audit chain', function () {
  this.timeout(60_000);
  forEachBackend((b) => {
    it('2 x 150 concurrent appends from two storages (bare and inside other stores’ transactions) make one chain, ids 1..n with no gap', async () => {
      const one = await b.open();
      const two = await b.open();
      const calls: Promise<unknown>[] = [];
      for (let i = 0; i < 150; i++) {
        calls.push(one.audit.append('test.one', null, { i }), two.audit.append('test.two', `d${i % 3}`, { i, nested: { b: 1, a: [i] } }));
        if (i % 30 === 0) calls.push(addDevice(i % 60 === 0 ? one : two, `dev-${i}`));
      }
      await Promise.all(calls);
      const n = await one.audit.lastId();
      expect(n).to.equal(300 + 5); // 300 appends, 5 device.add rows
      const all = await two.audit.query({ limit: 10_000 });
      expect(all.map((r) => r.id)).to.deep.equal(Array.from({ length: n }, (_, k) => k + 1));
      for (const s of [one, two]) {
        const v = await s.audit.verifyChain();
        expect(v.broken).to.equal(undefined);
        expect(v.checked).to.equal(n);
        expect(v.last.id).to.equal(n);
      }
      // A range: chained after the stored hash of the row before it.
      const part = await one.audit.verifyChain(100, 200);
      expect(part).to.include({ checked: 101 });
      expect(part.broken).to.equal(undefined);
      // An insert without its chain hashes is refused by the database.
      const bare = await rejectsAny(b.sql(one, "INSERT INTO audit (id, at, event, device_id, detail) VALUES (9999, 1, 'x', NULL, '{}')"));
      expect(bare.message).to.match(/chain hashes|null value/);
    });

    it('an edited row is found at its id (reason hash); the rows after it still link to its stored hash', async () => {
      const clock = new Clock();
      const s = await b.open({ now: clock.now });
      for (let i = 0; i < 20; i++) {
        await s.audit.append('test.row', i % 2 ? 'd1' : null, { i, text: 'ünïcode' });
        clock.advance(1);
      }
      expect((await s.audit.verifyChain()).broken).to.equal(undefined);
      await tamper(b, s, 'UPDATE audit SET detail = $1 WHERE id = 7', ['{"i":7,"text":"edited"}']);
      const v = await s.audit.verifyChain();
      expect(v.broken).to.include({ id: 7, reason: 'hash' });
      expect(v.checked).to.equal(6);
      expect(v.last.id).to.equal(6);
      expect((await s.audit.verifyChain(8)).broken).to.equal(undefined);
      expect((await s.audit.verifyChain(1, 6)).broken).to.equal(undefined);
      // The time alone, too.
      await tamper(b, s, 'UPDATE audit SET at = at + 1 WHERE id = 3');
      expect((await s.audit.verifyChain()).broken).to.include({ id: 3, reason: 'hash' });
    });

    it('a row edited with its hash recomputed breaks the link of the next; a deleted row, the next; a deleted tail, the head', async () => {
      const s = await b.open();
      for (let i = 0; i < 10; i++) await s.audit.append('test.row', null, { i });
      const rows = await b.sql(s, 'SELECT id, prev_hash, hash FROM audit WHERE id = 4');
      const forged = chainHash(String(rows[0]?.prev_hash), { id: 4, at: 0, event: 'forged', deviceId: null, detail: {} });
      await tamper(b, s, "UPDATE audit SET at = 0, event = 'forged', detail = '{}', hash = $1 WHERE id = 4", [forged]);
      expect((await s.audit.verifyChain()).broken).to.include({ id: 5, reason: 'link' });

      const t = await b.open(); // a second storage sees the same breaks
      await tamper(b, s, 'DELETE FROM audit WHERE id = 2');
      expect((await t.audit.verifyChain()).broken).to.include({ id: 3, reason: 'link' });
      await tamper(b, s, 'DELETE FROM audit WHERE id >= 9');
      const tail = await t.audit.verifyChain(6);
      expect(tail.broken).to.include({ id: 10, reason: 'head' });
      expect(tail.checked).to.equal(3);
    });
  });
});

describe('storage: audit verify of a tampered stored log (issue 25; 1,000 cases on SQLite: test/audit/audit-verify.test.ts)', function () {
  this.timeout(120_000);
  forEachBackend((b) => {
    it('100 random single-byte edits, deletions, reorders and truncations of the stored log are each found at their entry; restored, it verifies', async () => {
      const s = await b.open();
      const log = await buildAuditLog(s);
      if (b.name === 'sqlite') {
        await b.sql(s, 'DROP TRIGGER audit_append_only_update');
        await b.sql(s, 'DROP TRIGGER audit_append_only_delete');
      } else {
        await b.sql(s, 'ALTER TABLE audit DISABLE TRIGGER USER');
      }
      // The expression index would refuse a detail that is not JSON; someone with the database can drop it too.
      await b.sql(s, 'DROP INDEX audit_rollout');
      type Row = { id: number; at: number; event: string; device_id: string | null; detail: string; prev_hash: string; hash: string };
      const rows = (await b.sql(s, 'SELECT id, at, event, device_id, detail, prev_hash, hash FROM audit ORDER BY id')).map(
        (r) => ({ ...r, id: Number(r.id), at: Number(r.at) }) as Row,
      );
      const n = rows.length;
      expect(n).to.equal(log.n);
      const values = (r: Row): (string | number | null)[] => [r.at, r.event, r.device_id, r.detail, r.prev_hash, r.hash, r.id];
      const set = (r: Row): Promise<unknown> =>
        b.sql(s, 'UPDATE audit SET at = $1, event = $2, device_id = $3, detail = $4, prev_hash = $5, hash = $6 WHERE id = $7', values(r));
      const restore = async (): Promise<void> => {
        await b.sql(s, 'DELETE FROM audit');
        const ph = rows.map((_, i) => `(${Array.from({ length: 7 }, (_, k) => `$${i * 7 + k + 1}`).join(', ')})`).join(', ');
        await b.sql(s, `INSERT INTO audit (at, event, device_id, detail, prev_hash, hash, id) VALUES ${ph}`, rows.flatMap(values));
        await b.sql(s, 'UPDATE audit_head SET last_id = $1, hash = $2', [n, (rows[n - 1] as Row).hash]);
      };
      let seed = 2025;
      const rnd = (): number => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
      const pick = (lo: number, hi: number): number => lo + Math.floor(rnd() * (hi - lo + 1));
      for (let t = 0; t < 100; t++) {
        const kind = (['edit', 'delete', 'reorder', 'truncate'] as const)[t % 4];
        let expected: number;
        if (kind === 'edit') {
          const r = { ...(rows[pick(0, n - 1)] as Row) };
          const col = (['detail', 'event', 'prev_hash', 'hash'] as const)[pick(0, 3)] as 'detail' | 'event' | 'prev_hash' | 'hash';
          const at = pick(0, r[col].length - 1);
          const c = r[col][at] === 'x' ? 'y' : 'x';
          await set({ ...r, [col]: r[col].slice(0, at) + c + r[col].slice(at + 1) });
          expected = r.id;
        } else if (kind === 'delete') {
          expected = pick(1, n);
          await b.sql(s, 'DELETE FROM audit WHERE id = $1', [expected]);
        } else if (kind === 'reorder') {
          const x = rows[pick(0, n - 2)] as Row;
          const y = rows[pick(x.id, n - 1)] as Row;
          await set({ ...y, id: x.id });
          await set({ ...x, id: y.id });
          expected = x.id;
        } else {
          const keep = pick(0, n - 1);
          await b.sql(s, 'DELETE FROM audit WHERE id > $1', [keep]);
          if (t % 8 === 3 && keep > 0) await b.sql(s, 'UPDATE audit_head SET last_id = $1, hash = $2', [keep, (rows[keep - 1] as Row).hash]);
          expected = keep + 1;
        }
        const v = await verifyRegistry(s, log.keys);
        expect(v.broken?.id, `trial ${t} (${kind}): ${JSON.stringify(v.broken)}`).to.equal(expected);
        await restore();
      }
      expect((await verifyRegistry(s, log.keys)).broken).to.equal(undefined);
    });
  });
});
