/**
 * `provision-server audit`: read the audit log, filtered by device, rollout,
 * event and time; `audit verify|checkpoint|checkpoints|export`: its hash
 * chain, signed checkpoints and export (issue 25, server/audit/).
 */
import { defineCommand } from '../../lib/cli.js';
import { auditSubcommands } from './audit-chain.js';
import { auditLine, auditView, CLI_FILTER_NAMES, parseAuditFilter } from '../audit-filter.js';
import { openDataDir } from '../data-dir.js';
import { DEFAULT_AUDIT_LIMIT, MAX_AUDIT_LIMIT } from '../storage/records.js';
import { withData, registryOption } from './common.js';

export const auditCommand = defineCommand({
  command: 'audit',
  describe:
    'Print the audit log (enrollments, commands and acks, rollouts, tokens, refusals), oldest first, filtered; verify, checkpoint and export its hash chain',
  builder: (y) =>
    // The filters are this command's own (global: false): `audit verify --device X` is refused, not ignored.
    withData(auditSubcommands(y))
      .option('device', { global: false, type: 'string', describe: 'only the events of this device' })
      .option('rollout', { global: false, type: 'string', describe: "only this rollout's events and the commands it sealed (its id)" })
      .option('action', {
        global: false,
        type: 'string',
        describe: 'only this event, or every event under a dotted prefix: command.ack, rollout (rollout.create, rollout.cancel, ...), device.enroll',
      })
      .option('since', {
        global: false,
        type: 'string',
        describe: 'only events at or after: a duration ago (1h, 30m, 7d) or an ISO time (2026-12-04T10:00:00Z)',
      })
      .option('until', { global: false, type: 'string', describe: 'only events at or before: a duration ago or an ISO time' })
      .option('limit', {
        global: false,
        type: 'string',
        default: String(DEFAULT_AUDIT_LIMIT),
        describe: `the newest this many events that match (1-${MAX_AUDIT_LIMIT})`,
      })
      .option('json', { global: false, type: 'boolean', default: false, describe: 'print JSON lines (one object per event: id, at, event, device_id, detail)' })
      .example('$0 audit --device sensor-0001 --since 24h', '')
      .example('$0 audit --rollout 6f1c2a9e-... --action command.ack --json', '')
      .example('$0 audit verify', 'check the hash chain, the signed checkpoints and every board-signed ack')
      .example('$0 audit export --out audit.jsonl', 'for the offline verifier: provision-audit-verify audit.jsonl --trust trust.jwks'),
  handler: async (args) => {
    // The filters are checked before the data directory is opened.
    const filter = parseAuditFilter(args, CLI_FILTER_NAMES, 'E_USAGE', Date.now());
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const rows = await data.storage.audit.query(filter);
      process.stdout.write(rows.map((a) => `${args.json ? JSON.stringify(auditView(a)) : auditLine(a)}\n`).join(''));
    } finally {
      await data.storage.close();
    }
  },
});
