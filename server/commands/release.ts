/** `provision-server release keygen|add|list|show|remove`: agent releases, signed with the release key. */
import type { Argv, CommandModule } from 'yargs';
import { CodedError, isVersion, RELEASE_ARCHES } from '../../protocol/index.js';
import { defineCommand } from '../../lib/cli.js';
import { exists } from '../../lib/fs.js';
import { dataPaths, openDataDir } from '../data-dir.js';
import { generateReleaseKey, loadReleaseKey } from '../keys/release-key.js';
import { addReleaseFromFiles, addReleaseFromTree, removeRelease } from '../releases/store.js';
import { releaseTable, releaseView } from '../releases/views.js';
import { withData, registryOption } from './common.js';

const version = (v: unknown): string => {
  if (!isVersion(v)) throw new CodedError('E_USAGE', `VERSION ${JSON.stringify(v)} must be a version x.y.z[-pre]`);
  return v;
};

const keygenCommand = defineCommand({
  command: 'keygen',
  describe:
    'Make the release key (signs agent releases; boards pin DATA/release.jwks, which bundle copies): DATA/keys/release.jwk (0600), or --out FILE to keep it elsewhere',
  builder: (y) =>
    withData(y)
      .option('out', {
        type: 'string',
        describe: 'write the private key here (kept offline; sign with release add --key FILE) instead of DATA/keys/release.jwk',
      })
      .option('force', {
        type: 'boolean',
        default: false,
        describe: 'replace an existing release key and release.jwks (boards flashed with the old set refuse new releases until re-flashed)',
      }),
  handler: async (args) => {
    const paths = dataPaths(args.data);
    if (!(await exists(paths.config)))
      throw new CodedError('E_NO_DATA', `${paths.dir} is not a data directory; run: provision-server init --data ${args.data}`);
    const made = await generateReleaseKey(paths.dir, { ...(args.out !== undefined ? { out: args.out } : {}), force: args.force });
    process.stdout.write(`release key ${made.kid} written to ${made.key}; boards pin ${made.jwks} (bundle copies it)\n`);
  },
});

const addCommand = defineCommand({
  command: 'add [tree]',
  describe:
    'Add a release: pack an agent tree (build-agent output; version, arch and Node from its .build-info.json), sign its manifest with the release key and store it; or --artifact FILE --manifest FILE, a release signed elsewhere',
  builder: (y) =>
    withData(y)
      .positional('tree', { type: 'string', describe: 'the agent tree (a directory with .build-info.json)' })
      .option('agent-only', {
        type: 'boolean',
        default: false,
        describe: "leave the tree's node/ out: the release runs on the board's current Node (which must have the same ABI)",
      })
      .option('key', { type: 'string', describe: 'the release key (private JWK, 0600) when not DATA/keys/release.jwk' })
      .option('artifact', { type: 'string', describe: 'with --manifest: an artifact.tar.gz packed and signed elsewhere' })
      .option('manifest', { type: 'string', describe: 'with --artifact: its signed manifest (compact JWS)' })
      .option('json', { type: 'boolean', default: false, describe: 'print the release as JSON' })
      .example('$0 release add ./build/agent-arm64 --agent-only', '')
      .example('$0 release add --artifact artifact.tar.gz --manifest manifest.jws', ''),
  handler: async (args) => {
    const files = args.artifact !== undefined || args.manifest !== undefined;
    if (files && (args.artifact === undefined || args.manifest === undefined)) throw new CodedError('E_USAGE', '--artifact and --manifest go together');
    if (files && (args.tree !== undefined || args.agentOnly || args.key !== undefined))
      throw new CodedError('E_USAGE', 'a release signed elsewhere (--artifact, --manifest) takes no TREE, --agent-only or --key');
    if (!files && args.tree === undefined) throw new CodedError('E_USAGE', 'name an agent tree: release add TREE (or --artifact FILE --manifest FILE)');
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const { record, manifest } = files
        ? await addReleaseFromFiles(data.storage, data.paths.dir, args.artifact as string, args.manifest as string)
        : await addReleaseFromTree(data.storage, data.paths.dir, args.tree as string, {
            agentOnly: args.agentOnly,
            key: await loadReleaseKey(data.paths.dir, args.key),
          });
      if (args.json) return void process.stdout.write(`${JSON.stringify(releaseView(record), null, 2)}\n`);
      process.stdout.write(
        `release ${record.version} (${record.arch}) added: ${record.bytes} bytes in ${manifest.chunks.count} chunk(s), sha256 ${record.sha256}, ` +
          `${manifest.node.ships ? `ships Node ${manifest.node.version}` : `runs on the board's Node (abi ${manifest.node.abi})`}\n`,
      );
    } finally {
      await data.storage.close();
    }
  },
});

const listCommand = defineCommand({
  command: 'list',
  describe: 'List the releases (newest first)',
  builder: (y) => withData(y).option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
  handler: async (args) => {
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const all = await data.storage.releases.list();
      process.stdout.write(
        args.json
          ? `${JSON.stringify(
              all.map((r) => releaseView(r)),
              null,
              2,
            )}\n`
          : releaseTable(all),
      );
    } finally {
      await data.storage.close();
    }
  },
});

const showCommand = defineCommand({
  command: 'show <ver>',
  describe: 'Show a release: its manifest and files (JSON with --json; every arch of the version unless --arch)',
  builder: (y) =>
    withData(y)
      .positional('ver', { type: 'string', demandOption: true, coerce: version, describe: 'the release version (x.y.z[-pre])' })
      .option('arch', { choices: RELEASE_ARCHES, describe: 'only this architecture' })
      .option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
  handler: async (args) => {
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const store = data.storage.releases;
      const rs = args.arch !== undefined ? [await store.require(args.ver, args.arch)] : await store.list({ version: args.ver });
      if (rs.length === 0) throw new CodedError('E_NO_RELEASE', `no release ${args.ver}; see: provision-server release list`);
      const views = rs.map((r) => releaseView(r, { manifest: true }));
      if (args.json) return void process.stdout.write(`${JSON.stringify(args.arch !== undefined ? views[0] : views, null, 2)}\n`);
      process.stdout.write(releaseTable(rs));
      for (const r of rs) process.stdout.write(`${r.arch}: ${r.dir}\n`);
    } finally {
      await data.storage.close();
    }
  },
});

const removeCommand = defineCommand({
  command: 'remove <ver>',
  describe: 'Remove a release (its files; the registry keeps the record): refused while a running rollout or an unanswered upgrade command uses it',
  builder: (y) =>
    withData(y)
      .positional('ver', { type: 'string', demandOption: true, coerce: version, describe: 'the release version (x.y.z[-pre])' })
      .option('arch', { choices: RELEASE_ARCHES, describe: 'only this architecture (needed when the version has several)' }),
  handler: async (args) => {
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const r = await data.storage.releases.require(args.ver, args.arch);
      await removeRelease(data.storage, r, data.paths.dir);
      process.stdout.write(`removed release ${r.version} (${r.arch})\n`);
    } finally {
      await data.storage.close();
    }
  },
});

export const releaseCommand: CommandModule = {
  command: 'release <command>',
  describe: 'Agent releases: keygen, add, list, show, remove (send them with send ... upgrade --release VERSION)',
  builder: (y: Argv) =>
    y
      .command(keygenCommand)
      .command(addCommand)
      .command(listCommand)
      .command(showCommand)
      .command(removeCommand)
      .demandCommand(1, 'Name a release command (see --help).'),
  handler: () => undefined,
};
