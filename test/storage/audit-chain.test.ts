/**
 * The audit hash chain (issue 25): the pure encoding (server/storage/audit-chain.ts), and, in the shared
 * storage suite (SQLite and PostgreSQL), appends from two storages at once making one chain, and edits,
 * deletions and a lost tail found by verifyChain at the row they break.
 */
import { createHash } from 'node:crypto';
import { expect } from 'chai';
import { AUDIT_GENESIS, canonicalJson, chainHash, ChainChecker } from '../../server/storage/audit-chain.js';
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
