/** `provision-server registry migrate --to postgres://...`: copy the SQLite registry into PostgreSQL and verify the copy. */
import { resolve } from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { CodedError } from '../../protocol/index.js';
import { defineCommand } from '../../lib/cli.js';
import { dataPaths } from '../data-dir.js';
import { migrateRegistry, type MigrateResult } from '../storage/migrate-registry.js';
import { isPostgresUrl, parseRegistryLocation, redactUrl, REGISTRY_ENV } from '../storage/open.js';
import { withData } from './common.js';

/** Progress lines on stderr at most this often (a big fleet takes a while). */
const PROGRESS_EVERY_MS = 2000;

function report(r: MigrateResult): string {
  const width = Math.max(5, ...r.tables.map((t) => t.table.length));
  const rowsWidth = Math.max(4, ...r.tables.map((t) => String(t.rows).length));
  const lines = [`${'table'.padEnd(width)}  ${'rows'.padStart(rowsWidth)}  digest (sha-256)`];
  for (const t of r.tables) lines.push(`${t.table.padEnd(width)}  ${String(t.rows).padStart(rowsWidth)}  ${t.digest.slice(0, 16)}`);
  const total = r.tables.reduce((n, t) => n + t.rows, 0);
  lines.push('');
  lines.push(`${r.from} copied to ${r.to} and verified: ${total} rows in ${r.tables.length} tables, counts and digests equal.`);
  const f = r.releaseFiles;
  lines.push(
    `Release files: ${f.files} file${f.files === 1 ? '' : 's'} of ${f.releases} live release${f.releases === 1 ? '' : 's'} (${f.bytes} bytes) copied and verified (SHA-256).`,
  );
  for (const s of r.skipped) lines.push(`Not copied: ${s.table} (${s.rows} row${s.rows === 1 ? '' : 's'}): ${s.reason}.`);
  lines.push(
    `Next: stop every serve on the SQLite registry, then run the server on the new one: --registry URL, or ${REGISTRY_ENV}=URL, ` +
      `or "registry": "URL" in DATA/server.json (URL = ${r.to}, with its password if it has one).`,
  );
  lines.push(`The SQLite file ${r.from} was left unchanged (keep it as the backup of this moment).`);
  return `${lines.join('\n')}\n`;
}

const migrateCommand = defineCommand({
  command: 'migrate',
  describe: "Copy the data directory's SQLite registry into an empty PostgreSQL database and verify the copy (the SQLite file is only read)",
  builder: (y) =>
    withData(y)
      .option('to', {
        type: 'string',
        demandOption: true,
        describe: 'the PostgreSQL registry: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (must hold no registry data)',
      })
      .option('from', { type: 'string', describe: 'the SQLite registry to copy (default: DATA/registry.sqlite)' })
      .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON (tables with rows and digests, skipped tables)' })
      .example('$0 registry migrate --data /var/lib/provision-server --to postgres://provision@db.example.net/provision', ''),
  handler: async (args) => {
    if (!isPostgresUrl(args.to.trim())) {
      throw new CodedError('E_USAGE', `--to ${redactUrl(args.to)} is not a PostgreSQL URL: give postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`);
    }
    const to = parseRegistryLocation(args.to);
    if (to.kind !== 'postgres') throw new CodedError('E_USAGE', `--to ${redactUrl(args.to)} is not a PostgreSQL URL`);
    const from = args.from !== undefined ? resolve(args.from) : dataPaths(args.data).registry;
    let last = Date.now();
    const result = await migrateRegistry(from, to.url, {
      dataDir: args.data,
      log: { warn: (event, fields) => process.stderr.write(`provision-server: ${event} ${JSON.stringify(fields ?? {})}\n`) },
      onProgress: (p) => {
        if (args.json || Date.now() - last < PROGRESS_EVERY_MS) return;
        last = Date.now();
        process.stderr.write(`${p.phase === 'copy' ? 'copying' : 'verifying'} ${p.table}: ${p.copied}/${p.total} rows\n`);
      },
    });
    process.stdout.write(args.json ? `${JSON.stringify(result, null, 2)}\n` : report(result));
  },
});

export const registryCommand: CommandModule = {
  command: 'registry <command>',
  describe: 'Manage the registry database (migrate it from SQLite to PostgreSQL)',
  builder: (y: Argv) => y.command(migrateCommand).demandCommand(1, 'Name a registry command (see --help).'),
  handler: () => undefined,
};
