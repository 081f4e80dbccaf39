/**
 * `provision-server audit verify|checkpoint|checkpoints|export` (issue 25):
 * check the stored log (chain, signed checkpoints, boards' signed acks), sign
 * the chain's head on demand, export the checkpoints, export the log for the
 * standalone verifier (server/audit/verify-export.ts).
 */
import { writeFile } from 'node:fs/promises';
import type { Argv } from 'yargs';
import { CodedError, KeyRing } from '../../protocol/index.js';
import { readSmallFile } from '../../lib/cli-input.js';
import { defineCommand } from '../../lib/cli.js';
import { openDataDir, type OpenedData } from '../data-dir.js';
import { isCheckpointRecord, verifyCheckpoint, type CheckpointRecord } from '../audit/checkpoint.js';
import { checkpointJson } from '../audit/export-format.js';
import { makeCheckpoint, serverSigningKeys, verifyRegistry, writeExport } from '../audit/registry-audit.js';
import { summary } from '../audit/verify.js';
import { registryOption, withData } from './common.js';

async function withRegistry<T>(args: { data: string; registry?: string | undefined }, fn: (data: OpenedData) => Promise<T>): Promise<T> {
  const data = await openDataDir(args.data, registryOption(args));
  try {
    return await fn(data);
  } finally {
    await data.storage.close();
  }
}

/** --since: a stored checkpoint's id, or a file holding one (a line of `audit checkpoints`, the last if several, or its bare JWS). */
async function resolveSince(data: OpenedData, since: string): Promise<CheckpointRecord> {
  if (/^[1-9][0-9]{0,15}$/.test(since)) {
    const found = (await data.storage.audit.checkpoints()).find((c) => c.id === Number(since));
    if (!found) throw new CodedError('E_AUDIT_NO_CHECKPOINT', `no checkpoint #${since} in the registry (list them: provision-server audit checkpoints)`);
    return found;
  }
  const lines = (await readSmallFile(since, 64 * 1024 * 1024, 'checkpoint'))
    .toString('utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
  const last = lines.at(-1);
  if (last === undefined) throw new CodedError('E_AUDIT_NO_CHECKPOINT', `checkpoint file ${since} is empty`);
  if (last.startsWith('{')) {
    let v: unknown;
    try {
      v = JSON.parse(last) as unknown;
    } catch {
      throw new CodedError('E_AUDIT_NO_CHECKPOINT', `checkpoint file ${since}: its last line is not JSON`);
    }
    if (!isCheckpointRecord(v))
      throw new CodedError('E_AUDIT_NO_CHECKPOINT', `checkpoint file ${since}: its last line is not a checkpoint {id, at, last_id, hash, jws}`);
    return { id: v.id, at: v.at, lastId: v.last_id, hash: v.hash, jws: v.jws };
  }
  // A bare JWS: its claims are what it signed (verified again by verifyRegistry).
  const claims = await verifyCheckpoint(last, await KeyRing.create(serverSigningKeys(data.keys))).catch((err: unknown) => {
    throw new CodedError('E_AUDIT_CHECKPOINT', `checkpoint file ${since}: ${err instanceof Error ? err.message : String(err)}`);
  });
  return { id: 0, at: claims.at, lastId: claims.lastId, hash: claims.hash, jws: last };
}

const verifyCommand = defineCommand({
  command: 'verify',
  describe: 'Check the audit log: its hash chain, every signed checkpoint, every board-signed ack against the keys registered for its device',
  builder: (y) =>
    withData(y)
      .option('since', {
        type: 'string',
        describe: 'start at this checkpoint: its id (audit checkpoints), or a file holding it (a line of audit checkpoints --out, or its JWS)',
      })
      .option('json', { type: 'boolean', default: false, describe: 'print the report as JSON' })
      .strict(),
  handler: async (args) => {
    const report = await withRegistry(args, async (data) =>
      verifyRegistry(data.storage, data.keys, args.since === undefined ? undefined : await resolveSince(data, args.since)),
    );
    if (args.json) process.stdout.write(`${JSON.stringify(report)}\n`);
    else if (!report.broken) process.stdout.write(`${summary(report)}\n`);
    if (report.broken) throw new CodedError(report.broken.code, report.broken.message, { details: { ...report.broken } });
  },
});

const checkpointCommand = defineCommand({
  command: 'checkpoint',
  describe: "Sign the audit chain's head with the server's signing key and store the checkpoint (serve makes one every --audit-checkpoint-interval)",
  builder: (y) => withData(y).option('json', { type: 'boolean', default: false, describe: 'print the checkpoint as JSON' }).strict(),
  handler: async (args) => {
    const { checkpoint: c, created } = await withRegistry(args, (data) => makeCheckpoint(data.storage, data.keys, Date.now()));
    if (args.json) process.stdout.write(`${JSON.stringify({ ...checkpointJson(c), created })}\n`);
    else
      process.stdout.write(
        `${created ? 'checkpoint' : 'unchanged: the head has not moved since checkpoint'} #${c.id}: entry ${c.lastId}, hash ${c.hash}, ${new Date(c.at).toISOString()}\n`,
      );
  },
});

const checkpointsCommand = defineCommand({
  command: 'checkpoints',
  describe: 'Print (or write to --out) every signed checkpoint as JSON lines {id, at, last_id, hash, jws}, to keep apart from the registry',
  builder: (y) => withData(y).option('out', { type: 'string', describe: 'write them to this file (mode 0644) instead of standard output' }).strict(),
  handler: async (args) => {
    const all = await withRegistry(args, (data) => data.storage.audit.checkpoints());
    const text = all.map((c) => `${JSON.stringify(checkpointJson(c))}\n`).join('');
    if (args.out === undefined) process.stdout.write(text);
    else {
      await writeFile(args.out, text, { mode: 0o644 }).catch((err: unknown) => {
        throw new CodedError('E_NO_FILE', `cannot write ${args.out}: ${err instanceof Error ? err.message : String(err)}`);
      });
      process.stdout.write(`${all.length} checkpoint(s) written to ${args.out}\n`);
    }
  },
});

const exportCommand = defineCommand({
  command: 'export',
  describe: 'Write the audit log as JSON lines with the public keys and checkpoints, for the offline verifier provision-audit-verify',
  builder: (y) => withData(y).option('out', { type: 'string', demandOption: true, describe: 'the file to write (mode 0600; replaced when complete)' }).strict(),
  handler: async (args) => {
    const r = await withRegistry(args, (data) => writeExport(data.storage, data.keys, args.out, Date.now()));
    process.stdout.write(
      `${r.entries} entries (head: entry ${r.head.lastId}, ${r.head.hash}), ${r.checkpoints} checkpoint(s), the keys of ${r.devices} device(s) written to ${args.out}\n` +
        `verify offline: provision-audit-verify ${args.out} --trust trust.jwks\n`,
    );
  },
});

/** The audit subcommands, on the `audit` command's yargs. */
export function auditSubcommands(y: Argv): Argv {
  return y.command(verifyCommand).command(checkpointCommand).command(checkpointsCommand).command(exportCommand);
}
