#!/usr/bin/env node
/**
 * `provision-audit-verify FILE [--trust trust.jwks] [--json]`: verifies an
 * audit export (`provision-server audit export`) offline, with public keys
 * only: no registry, no data directory, no server code beyond the pure chain,
 * checkpoint and verifier modules (server/audit/{chain,checkpoint,verify,export-format}.ts).
 *
 * --trust FILE: the server's public keys to trust for the checkpoints (its
 * trust.jwks, obtained apart from the export); without it, the export's own
 * server_keys are used (the file then proves its internal consistency only).
 *
 * Exit 0 and a summary when all verifies; 1 and `CODE: where: what` for the
 * first entry that breaks (E_AUDIT_CHAIN, E_AUDIT_MALFORMED,
 * E_AUDIT_CHECKPOINT, E_AUDIT_ACK, E_AUDIT_REPORT); 2 for bad usage or a file that is not an
 * export (E_USAGE, E_NO_FILE, E_AUDIT_EXPORT).
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { CodedError, isCodedError, parseJwkSet, type PublicJwk } from '../../protocol/index.js';
import { readSmallFile } from '../../lib/cli-input.js';
import { parseExport } from './export-format.js';
import { summary, verifyAudit, type AuditReport } from './verify.js';

const PROGRAM = 'provision-audit-verify';
/** An export larger than this is refused (a JavaScript string holds at most ~512 MiB). */
export const MAX_EXPORT_BYTES = 512 * 1024 * 1024;

const USAGE = `usage: ${PROGRAM} FILE [--trust trust.jwks] [--json]
  Verifies an audit export (provision-server audit export --out FILE) offline:
  the hash chain, the signed checkpoints (against --trust, else the export's
  server_keys) and every board's signed ack (against the export's device keys).
  Exit 0: verified; 1: the first entry that breaks is named; 2: bad usage or file.`;

/** Verifies the export at `file`; `trust`: a JWK set file of server keys to pin. */
export async function verifyExportFile(file: string, trust?: string): Promise<AuditReport> {
  let serverKeys: PublicJwk[] | undefined;
  if (trust !== undefined) {
    const text = (await readSmallFile(trust, 256 * 1024, 'trust')).toString('utf8');
    try {
      serverKeys = (await parseJwkSet(JSON.parse(text) as unknown)).filter((k) => k.use === 'sig');
    } catch (err) {
      throw new CodedError('E_AUDIT_EXPORT', `trust file ${trust} is not a JWK set: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  const text = (await readSmallFile(file, MAX_EXPORT_BYTES, 'export')).toString('utf8');
  return verifyAudit(await parseExport(text, serverKeys ? { serverKeys } : {}));
}

const EXIT_USAGE = 2;

export async function main(argv: readonly string[]): Promise<number> {
  try {
    let parsed;
    try {
      parsed = parseArgs({
        args: [...argv],
        allowPositionals: true,
        strict: true,
        options: { trust: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean' } },
      });
    } catch (err) {
      throw new CodedError('E_USAGE', err instanceof Error ? err.message : String(err));
    }
    if (parsed.values.help) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    if (parsed.positionals.length !== 1) throw new CodedError('E_USAGE', 'give exactly one export FILE');
    const report = await verifyExportFile(parsed.positionals[0] as string, parsed.values.trust);
    if (parsed.values.json) process.stdout.write(`${JSON.stringify(report)}\n`);
    if (report.broken) {
      process.stderr.write(`${PROGRAM}: ${report.broken.code}: ${report.broken.message}\n`);
      return 1;
    }
    if (!parsed.values.json) process.stdout.write(`${summary(report)}\n`);
    return 0;
  } catch (err) {
    const code = isCodedError(err) ? err.code : 'E_INTERNAL';
    process.stderr.write(`${PROGRAM}: ${code}: ${err instanceof Error ? err.message : String(err)}\n${code === 'E_USAGE' ? `${USAGE}\n` : ''}`);
    return code === 'E_INTERNAL' ? 1 : EXIT_USAGE;
  }
}

const invoked = process.argv[1] !== undefined && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url);
if (invoked) process.exitCode = await main(process.argv.slice(2));
