/**
 * Issue 25 at the command line: `provision-server audit checkpoint|checkpoints|verify|export`
 * and the standalone verifier (dist/server/audit/verify-export.js, bin provision-audit-verify),
 * as child processes on a data directory made by `init`, with a real log (signed acks through
 * the server's ack path); tampering found with coded errors; refusals (bad flag, missing file,
 * unknown checkpoint) with exit 2. And serve's periodic checkpointer (server/audit/checkpointer.ts).
 */
import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { silentLogger } from '../../lib/log.js';
import { AuditCheckpointer } from '../../server/audit/checkpointer.js';
import { openDataDir } from '../../server/data-dir.js';
import { SqliteStorage } from '../../server/storage/sqlite/index.js';
import { buildAuditLog } from '../audit/audit-log.js';
import { runServerCli, useInitializedDataDir, type CliResult } from './run-cli.js';

const VERIFIER = fileURLToPath(new URL('../../server/audit/verify-export.js', import.meta.url));

function runVerifier(args: string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [VERIFIER, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('provision-server audit verify|checkpoint|checkpoints|export and provision-audit-verify (issue 25)', function () {
  this.timeout(60_000);
  const ctx = useInitializedDataDir('audit-cli-');
  let n = 0;

  before(async () => {
    const data = await openDataDir(ctx.data);
    try {
      n = (await buildAuditLog(data.storage, data.keys)).n;
    } finally {
      await data.storage.close();
    }
  });

  it('checkpoint (unchanged head: the last one; moved: a new one), checkpoints, verify (all, --since an id or a file, --json), export and the offline verifier', async () => {
    const same = await runServerCli(['audit', 'checkpoint', '--data', ctx.data]);
    expect(same.code, same.stderr).to.equal(0);
    expect(same.stdout).to.match(new RegExp(`^unchanged: the head has not moved since checkpoint #2: entry ${n}, hash [0-9a-f]{64}, `));
    const tok = await runServerCli(['token', 'create', '--data', ctx.data, '--device', 'b-9', '--user', 'alice']);
    expect(tok.code, tok.stderr).to.equal(0);
    const made = await runServerCli(['audit', 'checkpoint', '--data', ctx.data, '--json']);
    expect(made.code, made.stderr).to.equal(0);
    const cp = JSON.parse(made.stdout) as { id: number; last_id: number; created: boolean; jws: string };
    expect(cp).to.include({ id: 3, created: true });
    expect(cp.last_id).to.be.above(n);

    const verify = await runServerCli(['audit', 'verify', '--data', ctx.data]);
    expect(verify.code, verify.stderr).to.equal(0);
    expect(verify.stdout).to.match(
      new RegExp(
        `^audit OK: ${cp.last_id} entries \\(1\\.\\.${cp.last_id}\\), head [0-9a-f]{64}; 3 checkpoint\\(s\\) verified, the last #3 at entry ${cp.last_id} \\(.*\\); 11 signed ack\\(s\\) and 2 signed report\\(s\\) verified \\(3 device\\(s\\)\\)\\n$`,
      ),
    );
    const since = await runServerCli(['audit', 'verify', '--data', ctx.data, '--since', '2', '--json']);
    expect(since.code, since.stderr).to.equal(0);
    const report = JSON.parse(since.stdout) as { entries: number; first: number };
    expect(report).to.include({ entries: cp.last_id - n, first: n + 1 });

    const cps = join(ctx.dir, 'checkpoints.jsonl');
    const listed = await runServerCli(['audit', 'checkpoints', '--data', ctx.data, '--out', cps]);
    expect(listed.code, listed.stderr).to.equal(0);
    expect((await readFile(cps, 'utf8')).trim().split('\n')).to.have.length(3);
    // The file's last checkpoint (#3, at the head): nothing after it; a file holding #1 only: the entries after it.
    const atHead = await runServerCli(['audit', 'verify', '--data', ctx.data, '--since', cps]);
    expect(atHead.code, atHead.stderr).to.equal(0);
    expect(atHead.stdout).to.match(/^audit OK: no entries, head [0-9a-f]{64}; no checkpoint;/);
    const first = join(ctx.dir, 'first.jsonl');
    await writeFile(first, `${(await readFile(cps, 'utf8')).split('\n')[0] as string}\n`);
    const fromFile = await runServerCli(['audit', 'verify', '--data', ctx.data, '--since', first]);
    expect(fromFile.code, fromFile.stderr).to.equal(0);
    expect(fromFile.stdout).to.match(/^audit OK: [1-9]\d* entries .*; 2 checkpoint\(s\) verified/);
    // Its bare JWS does as well; one whose signature was altered is refused (E_AUDIT_CHECKPOINT, exit 1).
    const jws = (JSON.parse((await readFile(cps, 'utf8')).split('\n')[0] as string) as { jws: string }).jws;
    await writeFile(first, `${jws}\n`);
    const bare = await runServerCli(['audit', 'verify', '--data', ctx.data, '--since', first]);
    expect(bare.code, bare.stderr).to.equal(0);
    expect(bare.stdout).to.equal(fromFile.stdout);
    const sig = jws.split('.')[2] as string;
    await writeFile(first, `${jws.slice(0, -sig.length)}${sig[0] === 'A' ? 'B' : 'A'}${sig.slice(1)}\n`);
    const forged = await runServerCli(['audit', 'verify', '--data', ctx.data, '--since', first]);
    expect(forged.code).to.equal(1);
    expect(forged.stderr).to.match(/^provision-server: E_AUDIT_CHECKPOINT: checkpoint file .*: the signature does not verify/);

    const out = join(ctx.dir, 'audit.jsonl');
    const exported = await runServerCli(['audit', 'export', '--data', ctx.data, '--out', out]);
    expect(exported.code, exported.stderr).to.equal(0);
    expect(exported.stdout).to.match(
      new RegExp(`^${cp.last_id} entries \\(head: entry ${cp.last_id}, [0-9a-f]{64}\\), 3 checkpoint\\(s\\), the keys of 3 device\\(s\\) written to `),
    );
    const offline = await runVerifier([out, '--trust', join(ctx.data, 'keys', 'trust.jwks')]);
    expect(offline.code, offline.stderr).to.equal(0);
    expect(offline.stdout).to.match(new RegExp(`^audit OK: ${cp.last_id} entries .*11 signed ack\\(s\\) and 2 signed report\\(s\\) verified`));

    // One byte of one entry changed in the export: named by line, exit 1.
    const lines = (await readFile(out, 'utf8')).split('\n');
    lines[5] = (lines[5] as string).replace('"id":5', '"id":6');
    await writeFile(join(ctx.dir, 'bad.jsonl'), lines.join('\n'));
    const bad = await runVerifier([join(ctx.dir, 'bad.jsonl')]);
    expect(bad.code).to.equal(1);
    expect(bad.stderr).to.match(/^provision-audit-verify: E_AUDIT_CHAIN: entry 6 \(.+\) at line 6: its hash is not that of its content/);
  });

  it('a row edited in the registry: audit verify names it, E_AUDIT_CHAIN, exit 1', async () => {
    const data = await openDataDir(ctx.data);
    try {
      if (!(data.storage instanceof SqliteStorage)) throw new Error('SQLite expected');
      data.storage.db.exec('DROP TRIGGER audit_append_only_update');
      data.storage.db.prepare('UPDATE audit SET detail = ? WHERE id = 8').run('{"edited":true}');
    } finally {
      await data.storage.close();
    }
    const r = await runServerCli(['audit', 'verify', '--data', ctx.data]);
    expect(r.code).to.equal(1);
    expect(r.stdout).to.equal('');
    expect(r.stderr).to.match(/^provision-server: E_AUDIT_CHAIN: entry 8 \(\S+\): its hash is not that of its content \(the entry was edited\)\n$/);
  });

  it('refusals: a bad flag, a missing --out, an unknown checkpoint, a missing file, a bad interval (exit 2, coded)', async () => {
    const cases: [string[], RegExp][] = [
      [['audit', 'verify', '--data', ctx.data, '--bogus'], /E_USAGE: Unknown argument: bogus/],
      [['audit', 'verify', '--data', ctx.data, '--device', 'b-0'], /E_USAGE: Unknown argument: device/], // audit's filters are not verify's
      [['audit', 'export', '--data', ctx.data], /E_USAGE: Missing required argument: out/],
      [['audit', 'verify', '--data', ctx.data, '--since', '99'], /E_AUDIT_NO_CHECKPOINT: no checkpoint #99 in the registry/],
      [['audit', 'verify', '--data', ctx.data, '--since', join(ctx.dir, 'nope.jsonl')], /E_NO_FILE: checkpoint file .*nope\.jsonl does not exist/],
      [['audit', 'export', '--data', ctx.data, '--out', join(ctx.dir, 'no-dir', 'x.jsonl')], /E_NO_FILE: cannot write .*x\.jsonl/],
      [['serve', '--data', ctx.data, '--audit-checkpoint-interval', 'soon'], /E_USAGE: --audit-checkpoint-interval "soon"/],
    ];
    for (const [args, message] of cases) {
      const r = await runServerCli(args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).to.equal(2);
      expect(r.stderr, args.join(' ')).to.match(message);
    }
    await writeFile(join(ctx.dir, 'not-export.jsonl'), '{"hello":1}\n');
    const verifierCases: [string[], RegExp][] = [
      [[], /E_USAGE: give exactly one export FILE/],
      [[join(ctx.dir, 'x'), '--bogus'], /E_USAGE: Unknown option '--bogus'/],
      [[join(ctx.dir, 'missing.jsonl')], /E_NO_FILE: export file .*missing\.jsonl does not exist/],
      [[join(ctx.dir, 'not-export.jsonl')], /E_AUDIT_EXPORT: not an audit export: its first line is not a provision-server-audit-export header/],
      [[join(ctx.dir, 'not-export.jsonl'), '--trust', join(ctx.dir, 'not-export.jsonl')], /E_AUDIT_EXPORT: trust file .* is not a JWK set/],
    ];
    for (const [args, message] of verifierCases) {
      const r = await runVerifier(args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).to.equal(2);
      expect(r.stderr, args.join(' ')).to.match(message);
    }
  });

  it('the offline verifier loads no registry code: its imports reach neither server/storage nor a database driver', async () => {
    const seen = new Set<string>();
    const visit = async (file: string): Promise<void> => {
      if (seen.has(file)) return;
      seen.add(file);
      const text = await readFile(file, 'utf8');
      for (const m of text.matchAll(/^(?:import|export)\s[^'";]*?from\s*['"]([^'"]+)['"]|^import\s*['"]([^'"]+)['"]/gm)) {
        const spec = (m[1] ?? m[2]) as string;
        if (spec.startsWith('.')) await visit(fileURLToPath(new URL(spec, `file://${file}`)));
        else seen.add(spec);
      }
    };
    await visit(VERIFIER);
    const modules = [...seen];
    expect(modules.some((f) => f.includes('/server/audit/chain.js'))).to.equal(true);
    expect(modules.filter((f) => f.includes('/server/storage/') || f.includes('/server/commands/') || f.includes('data-dir'))).to.deep.equal([]);
    expect(modules.filter((f) => ['pg', 'better-sqlite3', 'mqtt'].includes(f))).to.deep.equal([]);
  });

  it("serve's checkpointer signs the head when it moved, and only then", async () => {
    const data = await openDataDir(ctx.data);
    const c = new AuditCheckpointer({ storage: data.storage, keys: data.keys, log: silentLogger }, 60_000);
    try {
      const before = (await data.storage.audit.checkpoints()).length;
      await c.tick();
      await c.tick();
      const after = await data.storage.audit.checkpoints();
      expect(after.length).to.be.oneOf([before, before + 1]); // +1 when the head moved since the last test
      const count = after.length;
      await c.tick();
      expect(await data.storage.audit.checkpoints()).to.have.length(count);
      await data.storage.audit.append('test.more', null, {});
      await c.tick();
      const last = (await data.storage.audit.checkpoints()).at(-1);
      expect(last?.lastId).to.equal((await data.storage.audit.head()).lastId);
      expect(await data.storage.audit.checkpoints()).to.have.length(count + 1);
    } finally {
      await c.stop();
      await data.storage.close();
    }
  });
});
