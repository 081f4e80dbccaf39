/** `provision-server device list|show|add|remove`: the device registry. */
import type { Argv, CommandModule } from 'yargs';
import { assertValidId, CodedError, parseJwkSet } from '../../protocol/index.js';
import { deviceIdFlag, readJsonFile } from '../../lib/cli-input.js';
import { openDataDir } from '../data-dir.js';
import { DEVICE_STATES } from '../registry/types.js';
import { printable } from '../terminal-text.js';
import { commandView, deviceView } from '../views.js';
import { withData } from './common.js';
import { defineCommand } from '../../lib/cli.js';

const listCommand = defineCommand({
  command: 'list',
  describe: 'List registered devices',
  builder: (y) =>
    withData(y)
      .option('user', { type: 'string', describe: 'only the devices of this user' })
      .option('state', { choices: DEVICE_STATES, describe: 'only devices in this state' })
      .option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
  handler: async (args) => {
    const data = await openDataDir(args.data);
    try {
      const devices = data.registry.listDevices({ ...(args.user ? { userId: args.user } : {}), ...(args.state ? { states: [args.state] } : {}) });
      if (args.json) return void process.stdout.write(`${JSON.stringify(devices.map(deviceView), null, 2)}\n`);
      const rows = [['DEVICE', 'USER', 'STATE', 'NEXT SEQ', 'ENCRYPTION', 'SIGNING KID', 'FLAG']];
      for (const d of devices) {
        rows.push([
          d.id,
          d.userId ?? '-',
          d.state,
          String(d.nextSeq),
          d.encryption?.alg ?? '-',
          d.signing?.kid.slice(0, 12) ?? '-',
          d.flag ? d.flag.event : '-',
        ]);
      }
      process.stdout.write(table(rows));
      const flagged = devices.filter((d) => d.flag).length;
      if (flagged > 0) process.stderr.write(`warning: ${flagged} device(s) flagged by a security event: see provision-server device show DEVICE\n`);
    } finally {
      data.registry.close();
    }
  },
});

const showCommand = defineCommand({
  command: 'show <device>',
  describe: 'Show one device: keys, state, recent commands and audit events (JSON)',
  builder: (y) => withData(y).positional('device', { type: 'string', demandOption: true, coerce: deviceIdFlag('DEVICE') }),
  handler: async (args) => {
    const data = await openDataDir(args.data);
    try {
      const device = data.registry.requireDevice(args.device);
      const commands = data.registry.listCommands({ deviceId: args.device, limit: 20 }).map((c) => commandView(c));
      const audit = data.registry
        .auditLog({ deviceId: args.device, limit: 20 })
        .map((a) => ({ at: new Date(a.at).toISOString(), event: a.event, ...a.detail }));
      process.stdout.write(`${JSON.stringify({ ...deviceView(device), recent_commands: commands, audit }, null, 2)}\n`);
    } finally {
      data.registry.close();
    }
  },
});

const addCommand = defineCommand({
  command: 'add',
  describe: 'Register a device whose keys were made elsewhere (its public JWK set, e.g. from sensor-agent keygen)',
  builder: (y) =>
    withData(y)
      .option('device', { type: 'string', demandOption: true, coerce: deviceIdFlag('--device'), describe: 'device id' })
      .option('user', { type: 'string', demandOption: true, describe: 'user id' })
      .option('jwks', { type: 'string', demandOption: true, describe: "the device's public JWK set: one encryption key, and a signing key to verify its acks" })
      .option('replace', { type: 'boolean', default: false, describe: 'replace the keys of a device already registered' }),
  handler: async (args) => {
    assertValidId(args.device);
    const set = await readJsonFile(args.jwks, 'device JWK set');
    const keys = await parseJwkSet(set);
    const enc = keys.filter((k) => k.use === 'enc');
    const sig = keys.filter((k) => k.use === 'sig');
    if (enc.length !== 1 || sig.length > 1) throw new CodedError('E_KEY', `${args.jwks} must hold exactly one encryption key and at most one signing key`);
    const data = await openDataDir(args.data);
    try {
      const d = data.registry.addDevice(
        { id: args.device, userId: args.user, origin: 'jwks', encryption: enc[0] as (typeof enc)[number], ...(sig[0] ? { signing: sig[0] } : {}) },
        { replace: args.replace },
      );
      process.stdout.write(
        `registered ${d.id} (user ${printable(args.user)}), encryption ${d.encryption?.alg} ${d.encryption?.kid}${d.signing ? `, signing ${d.signing.kid}` : ', no signing key: its acks cannot be verified yet'}\n`,
      );
    } finally {
      data.registry.close();
    }
  },
});

const removeCommand = defineCommand({
  command: 'remove <device>',
  describe:
    'Remove a device from the registry (keys and unused tokens; its command history and the audit log stay). Does not wipe the board: send delete for that.',
  builder: (y) => withData(y).positional('device', { type: 'string', demandOption: true, coerce: deviceIdFlag('DEVICE') }),
  handler: async (args) => {
    const data = await openDataDir(args.data);
    try {
      data.registry.removeDevice(args.device);
      process.stdout.write(`removed ${args.device}\n`);
    } finally {
      data.registry.close();
    }
  },
});

export const deviceCommand: CommandModule = {
  command: 'device <command>',
  describe: 'The device registry',
  builder: (y: Argv) =>
    y.command(listCommand).command(showCommand).command(addCommand).command(removeCommand).demandCommand(1, 'Name a device command (see --help).'),
  handler: () => undefined,
};

/** Aligned columns; control characters in cells are escaped (see terminal-text.ts). */
export function table(cells: string[][]): string {
  const rows = cells.map((r) => r.map(printable));
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ')).join('\n') + '\n';
}
