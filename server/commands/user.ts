/**
 * `provision-server user add|list|remove|passwd`: operator accounts of the
 * console and the HTTP API (roles viewer, operator, admin). A password is read
 * from --password-file (a file, or `-` for standard input: its first line), or
 * prompted for twice without echo on a terminal; never from the command line.
 * Audit rows name the acting account as `cli:LOGIN` (the system user).
 */
import { userInfo } from 'node:os';
import type { Argv, CommandModule } from 'yargs';
import { CodedError } from '../../protocol/index.js';
import { readInput } from '../../lib/cli-input.js';
import { defineCommand } from '../../lib/cli.js';
import { openDataDir } from '../data-dir.js';
import { MAX_PASSWORD_LENGTH } from '../operators/password.js';
import { newOperator, setOperatorPassword } from '../operators/accounts.js';
import { OPERATOR_ROLES, checkOperatorName, checkOperatorRole } from '../storage/operator-records.js';
import { table } from '../terminal-text.js';
import { registryOption, withData } from './common.js';

const actor = (): string => `cli:${userInfo().username}`;

/** Reads one line with the terminal's echo off (raw mode; listeners, not an async iterator, which would destroy stdin on return). */
function promptHidden(question: string): Promise<string> {
  const stdin = process.stdin;
  process.stderr.write(question);
  stdin.setRawMode(true);
  return new Promise<string>((resolve, reject) => {
    let line = '';
    const done = (err: Error | undefined): void => {
      stdin.off('data', onData);
      stdin.off('end', onEnd);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve(line);
    };
    const onEnd = (): void => done(undefined);
    const onData = (chunk: Buffer): void => {
      for (const ch of chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return done(undefined);
        if (ch === '\u0003' || ch === '\u0004') return done(new CodedError('E_USAGE', 'interrupted: no password read'));
        if (ch === '\u007f' || ch === '\b') line = line.slice(0, -1);
        else line += ch;
      }
    };
    stdin.on('data', onData);
    stdin.on('end', onEnd);
    stdin.resume();
  });
}

/** The new password: the file's (or standard input's) first line, or prompted twice on a terminal. */
async function readPassword(file: string | undefined): Promise<string> {
  if (file === undefined && process.stdin.isTTY) {
    const a = await promptHidden('password: ');
    const b = await promptHidden('again: ');
    if (a !== b) throw new CodedError('E_PASSWORD', 'the two passwords differ');
    return a;
  }
  const text = (await readInput(file, MAX_PASSWORD_LENGTH * 4 + 2)).toString('utf8');
  return text.split(/\r?\n/)[0] ?? '';
}

const passwordFileOption = {
  type: 'string',
  describe: 'read the password from this file (its first line; `-`: standard input); default: prompt on a terminal, else standard input',
} as const;

const addCommand = defineCommand({
  command: 'add <name>',
  describe: 'Add an operator account with a role and a password (hashed with scrypt)',
  builder: (y) =>
    withData(y)
      .positional('name', { type: 'string', demandOption: true, describe: 'operator name: a-z 0-9 . _ -, starting with a letter' })
      .option('role', {
        type: 'string',
        demandOption: true,
        choices: OPERATOR_ROLES,
        describe: 'viewer: reads; operator: also sends and runs rollouts; admin: also manages users, tokens, enrollments',
      })
      .option('password-file', passwordFileOption),
  handler: async (args) => {
    // Name and role are checked before a password is read.
    checkOperatorName(args.name);
    checkOperatorRole(args.role);
    const { name, role, passwordHash } = await newOperator(args.name, args.role, await readPassword(args.passwordFile));
    const data = await openDataDir(args.data, registryOption(args));
    try {
      await data.storage.operators.add({ name, role, passwordHash }, actor());
      process.stderr.write(`operator ${name} added (${role})\n`);
    } finally {
      await data.storage.close();
    }
  },
});

const listCommand = defineCommand({
  command: 'list',
  describe: 'List operator accounts: name, role, created, updated, disabled',
  builder: (y) => withData(y).option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
  handler: async (args) => {
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const operators = await data.storage.operators.list();
      if (args.json) return void process.stdout.write(`${JSON.stringify(operators, null, 2)}\n`);
      const iso = (t: number | null): string => (t === null ? '-' : new Date(t).toISOString());
      const rows = [['NAME', 'ROLE', 'CREATED', 'UPDATED', 'DISABLED']];
      for (const o of operators) rows.push([o.name, o.role, iso(o.createdAt), iso(o.updatedAt), iso(o.disabledAt)]);
      process.stdout.write(table(rows));
    } finally {
      await data.storage.close();
    }
  },
});

const removeCommand = defineCommand({
  command: 'remove <name>',
  describe: 'Remove an operator account with its API tokens and sessions (never the last enabled admin)',
  builder: (y) => withData(y).positional('name', { type: 'string', demandOption: true, describe: 'operator name' }),
  handler: async (args) => {
    const data = await openDataDir(args.data, registryOption(args));
    try {
      await data.storage.operators.remove(args.name, actor());
      process.stderr.write(`operator ${args.name} removed\n`);
    } finally {
      await data.storage.close();
    }
  },
});

const passwdCommand = defineCommand({
  command: 'passwd <name>',
  describe: "Set an operator's password (its console sessions end)",
  builder: (y) => withData(y).positional('name', { type: 'string', demandOption: true, describe: 'operator name' }).option('password-file', passwordFileOption),
  handler: async (args) => {
    const data = await openDataDir(args.data, registryOption(args));
    try {
      // Refused before a password is read when there is no such operator.
      await setOperatorPassword(data.storage, args.name, () => readPassword(args.passwordFile), actor());
      process.stderr.write(`password of ${args.name} changed\n`);
    } finally {
      await data.storage.close();
    }
  },
});

export const userCommand: CommandModule = {
  command: 'user <command>',
  describe: 'Operator accounts of the console and the HTTP API',
  builder: (y: Argv) =>
    y.command(addCommand).command(listCommand).command(removeCommand).command(passwdCommand).demandCommand(1, 'Name a user command (see --help).'),
  handler: () => undefined,
};
