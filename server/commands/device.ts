/** `provision-server device list|show|add|remove`: the device registry. */
import type { Argv, CommandModule } from 'yargs';
import { assertValidId, CodedError, parseJwkSet, type ReportUpgrade } from '../../protocol/index.js';
import { deviceIdFlag, readJsonFile } from '../../lib/cli-input.js';
import { openDataDir } from '../data-dir.js';
import { DEVICE_STATES } from '../storage/records.js';
import { printable, table } from '../terminal-text.js';
import { presenceOf } from '../core/presence.js';
import { commandView, deviceView, tokenView } from '../http/record-views.js';
import { withData, registryOption } from './common.js';
import { defineCommand } from '../../lib/cli.js';

const listCommand = defineCommand({
  command: 'list',
  describe: 'List registered devices',
  builder: (y) =>
    withData(y)
      .option('user', { type: 'string', describe: 'only the devices of this user' })
      .option('state', { choices: DEVICE_STATES, describe: 'only devices in this state' })
      .option('tag', { type: 'string', describe: 'only the devices with this tag' })
      .option('pending', {
        type: 'boolean',
        default: false,
        describe: 'instead: the devices bundled (a token issued) that never enrolled, with their token (valid or expired)',
      })
      .option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
  handler: async (args) => {
    if (args.pending && (args.user !== undefined || args.state !== undefined || args.tag !== undefined)) {
      throw new CodedError('E_USAGE', '--pending lists devices not enrolled: it takes no --user, --state or --tag');
    }
    const data = await openDataDir(args.data, registryOption(args));
    try {
      if (args.pending) {
        const pending = await data.storage.enrollment.pendingEnrollments();
        if (args.json) return void process.stdout.write(`${JSON.stringify(pending.map(tokenView), null, 2)}\n`);
        const iso = (t: number): string => new Date(t).toISOString();
        const rows = [['DEVICE', 'USER', 'REGISTERED', 'TOKEN CREATED', 'TOKEN EXPIRES', 'TOKEN']];
        for (const p of pending) rows.push([p.deviceId, p.userId, p.deviceState ?? 'no', iso(p.createdAt), iso(p.expiresAt), p.status]);
        process.stdout.write(table(rows));
        return;
      }
      const devices = await data.storage.devices.list({
        ...(args.user ? { userId: args.user } : {}),
        ...(args.state ? { states: [args.state] } : {}),
        ...(args.tag ? { tag: args.tag } : {}),
      });
      const now = Date.now();
      if (args.json)
        return void process.stdout.write(
          `${JSON.stringify(
            devices.map((d) => deviceView(d, now)),
            null,
            2,
          )}\n`,
        );
      const rows = [['DEVICE', 'USER', 'STATE', 'PRESENCE', 'LAST SEEN', 'VERSION', 'ARCH', 'UPGRADE', 'NODE', 'NEXT SEQ', 'ENCRYPTION', 'TAGS', 'FLAG']];
      for (const d of devices) {
        rows.push([
          d.id,
          d.userId ?? '-',
          d.state,
          presenceOf(d.presence, now),
          d.presence.lastSeenAt === null ? '-' : new Date(d.presence.lastSeenAt).toISOString(),
          d.agentVersion ?? '-',
          d.arch ?? '-',
          upgradeText(d.presence.state?.upgrade),
          d.presence.state?.node_version ?? '-',
          String(d.nextSeq),
          d.encryption?.alg ?? '-',
          d.tags.join(',') || '-',
          d.flag ? d.flag.event : '-',
        ]);
      }
      process.stdout.write(table(rows));
      const flagged = devices.filter((d) => d.flag).length;
      if (flagged > 0) process.stderr.write(`warning: ${flagged} device(s) flagged by a security event: see provision-server device show DEVICE\n`);
    } finally {
      await data.storage.close();
    }
  },
});

/** The upgrade a board's last report said was under way: `0.3.0 download 12/40`, `0.3.0 trial`, or `-`. */
export function upgradeText(u: ReportUpgrade | null | undefined): string {
  if (!u) return '-';
  return `${u.to} ${u.phase}${u.phase === 'download' && u.done !== undefined && u.total !== undefined ? ` ${u.done}/${u.total}` : ''}`;
}

const showCommand = defineCommand({
  command: 'show <device>',
  describe: 'Show one device: keys, state, presence and reported state, tags, recent commands and audit events (JSON)',
  builder: (y) => withData(y).positional('device', { type: 'string', demandOption: true, coerce: deviceIdFlag('DEVICE') }),
  handler: async (args) => {
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const device = await data.storage.devices.require(args.device);
      const commands = (await data.storage.commands.list({ deviceId: args.device, limit: 20 })).map((c) => commandView(c));
      const audit = (await data.storage.audit.log({ deviceId: args.device, limit: 20 })).map((a) => ({
        at: new Date(a.at).toISOString(),
        event: a.event,
        ...a.detail,
      }));
      process.stdout.write(`${JSON.stringify({ ...deviceView(device), recent_commands: commands, audit }, null, 2)}\n`);
    } finally {
      await data.storage.close();
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
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const d = await data.storage.devices.add(
        { id: args.device, userId: args.user, origin: 'jwks', encryption: enc[0] as (typeof enc)[number], ...(sig[0] ? { signing: sig[0] } : {}) },
        { replace: args.replace },
      );
      process.stdout.write(
        `registered ${d.id} (user ${printable(args.user)}), encryption ${d.encryption?.alg} ${d.encryption?.kid}${d.signing ? `, signing ${d.signing.kid}` : ', no signing key: its acks cannot be verified yet'}\n`,
      );
    } finally {
      await data.storage.close();
    }
  },
});

const removeCommand = defineCommand({
  command: 'remove <device>',
  describe:
    'Remove a device from the registry (keys and unused tokens; its command history and the audit log stay). Does not wipe the board: send delete for that.',
  builder: (y) => withData(y).positional('device', { type: 'string', demandOption: true, coerce: deviceIdFlag('DEVICE') }),
  handler: async (args) => {
    const data = await openDataDir(args.data, registryOption(args));
    try {
      await data.storage.devices.remove(args.device);
      process.stdout.write(`removed ${args.device}\n`);
    } finally {
      await data.storage.close();
    }
  },
});

function tagChange(verb: 'add' | 'remove', describe: string) {
  return defineCommand({
    command: `${verb} <device> <tags..>`,
    describe,
    builder: (y) =>
      withData(y)
        .positional('device', { type: 'string', demandOption: true, coerce: deviceIdFlag('DEVICE') })
        .positional('tags', { type: 'string', array: true, demandOption: true }),
    handler: async (args) => {
      const data = await openDataDir(args.data, registryOption(args));
      try {
        const given = args.tags.map(String);
        const tags = verb === 'add' ? await data.storage.devices.addTags(args.device, given) : await data.storage.devices.removeTags(args.device, given);
        process.stdout.write(`${args.device}: ${tags.join(', ') || '(no tags)'}\n`);
      } finally {
        await data.storage.close();
      }
    },
  });
}

const tagListCommand = defineCommand({
  command: 'list [device]',
  describe: "Every tag and how many devices carry it, or one device's tags",
  builder: (y) =>
    withData(y)
      .positional('device', { type: 'string', coerce: (v: string | undefined) => (v === undefined ? undefined : deviceIdFlag('DEVICE')(v)) })
      .option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
  handler: async (args) => {
    const data = await openDataDir(args.data, registryOption(args));
    try {
      if (args.device !== undefined) {
        const tags = (await data.storage.devices.require(args.device)).tags;
        process.stdout.write(args.json ? `${JSON.stringify(tags)}\n` : `${tags.join('\n')}${tags.length ? '\n' : ''}`);
        return;
      }
      const tags = await data.storage.devices.listTags();
      if (args.json) return void process.stdout.write(`${JSON.stringify(tags, null, 2)}\n`);
      process.stdout.write(table([['TAG', 'DEVICES'], ...tags.map((t) => [t.tag, String(t.devices)])]));
    } finally {
      await data.storage.close();
    }
  },
});

const tagCommand: CommandModule = {
  command: 'tag <command>',
  describe: 'Device tags: add, remove, list',
  builder: (y: Argv) =>
    y
      .command(tagChange('add', 'Add tags to a device (target them with send --tag TAG)'))
      .command(tagChange('remove', 'Remove tags from a device'))
      .command(tagListCommand)
      .demandCommand(1, 'Name a tag command (see --help).'),
  handler: () => undefined,
};

export const deviceCommand: CommandModule = {
  command: 'device <command>',
  describe: 'The device registry',
  builder: (y: Argv) =>
    y
      .command(listCommand)
      .command(showCommand)
      .command(addCommand)
      .command(removeCommand)
      .command(tagCommand)
      .demandCommand(1, 'Name a device command (see --help).'),
  handler: () => undefined,
};
