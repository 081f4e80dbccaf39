/**
 * provisioning/build-agent (issue 9): its usage errors, and the host tree `npm run build` writes
 * (build/host), which the tests, the demo and the bench run: one bundle, the epoll addon beside
 * it, .build-info.json naming the target. The bundle loads onoff's addon from native/epoll.node
 * (no node_modules): the self-test of the bundled agent, run as a process, loads it, and
 * reports the addon missing from a copy of the tree without native/.
 * The ARM trees are built and loaded under qemu-user by .ci/check-arm-trees.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, cp, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readElfMachine } from '../../provisioning/flasher/agent-tree.js';
import { parseBuildArgs } from '../../provisioning/builder/build-agent.js';
import { freePort } from '../helpers/brokers.js';
import { AGENT_CLI, hostSnapshot } from '../helpers/agent-process.js';
import { SNAPSHOT_NODE_FLAGS } from '../../provisioning/builder/snapshot.js';
import { makeParty } from '../helpers/keys.js';
import { makeDevice, removeDir } from '../agent/agent-fixture.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const HOST_TREE = join(REPO, 'build/host');
const BUILD_AGENT = join(REPO, 'provisioning/build-agent');
const HOST_MACHINE = process.arch === 'arm64' ? 'aarch64' : process.arch === 'arm' ? 'arm' : 'x86-64';

function run(file: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: 60_000, env: { ...process.env, NOTIFY_SOCKET: '' } }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

describe('deploy/agent tree (provisioning/build-agent)', function () {
  this.timeout(60_000);
  const dirs: string[] = [];
  after(async () => {
    for (const d of dirs) await removeDir(d);
  });

  it('bad usage exits 2 with the reason, writing nothing', async () => {
    const out = join(await mkdtemp(join(tmpdir(), 'build-agent-')), 'tree');
    dirs.push(join(out, '..'));
    const cases: Array<[string[], RegExp]> = [
      [['--arch', 'mips'], /E_USAGE: --arch must be one of arm64, armv7, x64/],
      [['--arch', 'arm64', '--node', '18.20.4'], /E_USAGE: --node 18\.20\.4 is below the agent's minimum Node 20\.19\.0/],
      [['--arch', 'armv7', '--node', '26.12.1'], /E_USAGE: the npm registry has no armv7 Node >= 20\.19\.0.*--node system.*--node-tarball/],
      [['--arch', 'arm64', '--node', '26.12.1', '--node-tarball', 'x.tar.xz'], /E_USAGE: give --node or --node-tarball, not both/],
      [['--arch', 'arm64', '--system-node-version', '20.19.2'], /E_USAGE: --system-node-version applies to --node system only/],
      [['--arch', 'x64', '--node-tarball', join(out, 'node.tar.xz')], /E_INPUT: --node-tarball .* does not exist/],
      [['--gpio', 'maybe'], /E_USAGE: --gpio must be native or omit/],
      [['--agent-version', '1.2'], /E_USAGE: --agent-version must be a version x\.y\.z\[-pre\]/],
      [['--agent-version', '0.2.0/../x'], /E_USAGE: --agent-version must be a version/],
    ];
    for (const [args, message] of cases) {
      const r = await run(BUILD_AGENT, [...args, '--out', out]);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).to.equal(2);
      expect(r.stderr).to.match(message);
      expect(await readdir(join(out, '..'))).to.deep.equal([]);
    }
    // --agent-version stamps the release version (the bundle's SENSOR_AGENT_VERSION, .build-info.json agent_version).
    expect(parseBuildArgs(['--arch', 'x64', '--agent-version', '0.2.0-rc.1'])?.agentVersion).to.equal('0.2.0-rc.1');
    expect(parseBuildArgs(['--arch', 'x64'])?.agentVersion).to.equal(undefined);
    const help = await run(BUILD_AGENT, ['--help']);
    expect(help.code).to.equal(0);
    expect(help.stdout).to.match(/--arch A .*\n(.*\n)*.*arm64 +64-bit Raspberry Pi OS/);
  });

  it('the host tree is one bundle, the addon for this CPU and Node, and its build info', async () => {
    expect(AGENT_CLI).to.equal(join(HOST_TREE, 'sensor-agent.mjs'));
    const info = JSON.parse(await readFile(join(HOST_TREE, '.build-info.json'), 'utf8')) as Record<string, unknown> & {
      node: Record<string, string>;
      addon: { path: string; abi: string } | null;
    };
    expect(info).to.deep.include({ format: 2, elf_machine: HOST_MACHINE, bundle: 'sensor-agent.mjs' });
    expect(info.node).to.deep.include({ source: 'system', version: process.versions.node, abi: process.versions.modules });
    const names = (await readdir(HOST_TREE)).sort();
    expect(names).to.not.include('node_modules');
    expect(names).to.include.members(['.build-info.json', 'sensor-agent.mjs']);
    if (info.addon !== null) {
      expect(info.addon.abi).to.equal(process.versions.modules);
      expect(await readElfMachine(join(HOST_TREE, info.addon.path))).to.equal(HOST_MACHINE);
    }
    const pkg = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { version: string };
    const v = await run(process.execPath, [AGENT_CLI, '--version']);
    expect(v.stdout.trim()).to.equal(pkg.version);
    // npm run build made its startup snapshot with this Node; the tests start the agent from it (spawnAgent).
    expect((info as { snapshot?: unknown }).snapshot).to.deep.include({ path: 'sensor-agent.blob', node_version: process.versions.node });
    expect(hostSnapshot()).to.equal(join(HOST_TREE, 'sensor-agent.blob'));
    const s = await run(process.execPath, [...SNAPSHOT_NODE_FLAGS, `--snapshot-blob=${join(HOST_TREE, 'sensor-agent.blob')}`, AGENT_CLI, '--version']);
    expect(s.stdout.trim(), s.stderr).to.equal(pkg.version);
  });

  it('the bundled agent loads its GPIO addon from native/ beside it, and says so when it is missing', async function () {
    const info = JSON.parse(await readFile(join(HOST_TREE, '.build-info.json'), 'utf8')) as { addon: unknown };
    if (info.addon === null && process.env.CI) throw new Error('npm ci did not build epoll: the host tree has no GPIO addon');
    if (info.addon === null) this.skip(); // a machine without a compiler: npm ci left epoll out
    const server = await makeParty();
    const brokerUrl = `mqtt://127.0.0.1:${await freePort()}`;
    const files = await makeDevice({ deviceId: 'tree-gpio', brokerUrl, server, keys: true, extra: { gpio: { backend: 'auto' } } });
    dirs.push(files.dir);
    const gpioCheck = async (cli: string): Promise<{ status: string; reason: string }> => {
      const r = await run(process.execPath, [cli, 'selftest', '--json', '--config', files.configPath]);
      const report = JSON.parse(r.stdout) as { checks: Array<{ id: string; status: string; reason: string }> };
      const check = report.checks.find((c) => c.id === 'gpio');
      expect(check, r.stdout).to.not.equal(undefined);
      return check!;
    };
    const loaded = await gpioCheck(AGENT_CLI);
    expect(loaded.reason).to.not.match(/cannot load|native\/epoll\.node/);

    const copy = await mkdtemp(join(tmpdir(), 'tree-no-addon-'));
    dirs.push(copy);
    await cp(HOST_TREE, copy, { recursive: true });
    await rm(join(copy, 'native'), { recursive: true });
    const missing = await gpioCheck(join(copy, 'sensor-agent.mjs'));
    expect(missing.reason).to.match(/cannot load onoff.*native\/epoll\.node/);
  });

  /**
   * An official-layout tarball (node-vX.Y.Z-linux-<arch>/ with bin/node, include/node, LICENSE)
   * made from this machine's own Node: what a 32-bit Bookworm board gets (an armv7l tarball from
   * nodejs.org, which this machine cannot download), for this CPU. A tarball whose headers say
   * 20.11 is refused before anything is written.
   */
  it('--node-tarball ships the Node of an official tarball, recorded with its sha256; one below 20.19 is refused', async function () {
    this.timeout(240_000);
    const prefix = join(process.execPath, '../..');
    const headers = join(prefix, 'include/node');
    const versionH = await readFile(join(headers, 'node_version.h'), 'utf8').catch(() => {
      throw new Error(`this test needs the running Node's headers in ${headers} (node-gyp builds against them too)`);
    });
    const license = await readFile(join(prefix, 'share/doc/nodejs/LICENSE'), 'utf8')
      .catch(() => readFile(join(prefix, 'share/doc/node/LICENSE'), 'utf8'))
      .catch(() => 'Node.js license (test tarball)\n');
    const work = await mkdtemp(join(tmpdir(), 'node-tarball-'));
    dirs.push(work);
    const tarArch = process.arch === 'arm64' ? 'arm64' : process.arch === 'arm' ? 'armv7l' : 'x64';
    const buildArch = process.arch === 'arm64' ? 'arm64' : process.arch === 'arm' ? 'armv7' : 'x64';
    const makeTarball = async (version: string, header: string): Promise<string> => {
      const top = `node-v${version}-linux-${tarArch}`;
      await mkdir(join(work, top, 'bin'), { recursive: true });
      await copyFile(process.execPath, join(work, top, 'bin/node'));
      await cp(headers, join(work, top, 'include/node'), { recursive: true });
      await writeFile(join(work, top, 'include/node/node_version.h'), header);
      await writeFile(join(work, top, 'LICENSE'), license);
      const file = join(work, `${top}.tar.gz`);
      const t = await run('tar', ['-czf', file, '-C', work, top]);
      expect(t.code, t.stderr).to.equal(0);
      return file;
    };

    const good = await makeTarball(process.versions.node, versionH);
    const out = join(work, 'tree');
    const b = await run(BUILD_AGENT, ['--arch', buildArch, '--node-tarball', good, '--out', out]);
    expect(b.code, b.stderr).to.equal(0);
    const info = JSON.parse(await readFile(join(out, '.build-info.json'), 'utf8')) as { arch: string; node: Record<string, string>; snapshot?: unknown };
    expect(info.arch).to.equal(buildArch);
    const sum = createHash('sha256')
      .update(await readFile(good))
      .digest('hex');
    expect(info.node).to.deep.include({ source: 'tarball', version: process.versions.node, abi: process.versions.modules, file: basename(good), sha256: sum });
    const v = await run(join(out, 'node/bin/node'), [join(out, 'sensor-agent.mjs'), '--version']);
    expect(v.code, v.stderr).to.equal(0);
    const pkg = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { version: string };
    expect(v.stdout.trim()).to.equal(pkg.version);
    // Its startup snapshot, made by that Node, and what the unit reads to use it.
    expect(info.snapshot).to.deep.include({ path: 'sensor-agent.blob', node_version: process.versions.node });
    expect(await readFile(join(out, 'snapshot.env'), 'utf8')).to.match(/^SENSOR_AGENT_SNAPSHOT=--snapshot-blob=\/opt\/sensor-agent\/sensor-agent\.blob$/m);
    const s = await run(join(out, 'node/bin/node'), [
      ...SNAPSHOT_NODE_FLAGS,
      `--snapshot-blob=${join(out, 'sensor-agent.blob')}`,
      join(out, 'sensor-agent.mjs'),
      '--version',
    ]);
    expect(s.code, s.stderr).to.equal(0);
    expect(s.stdout.trim()).to.equal(pkg.version);

    const oldHeader = versionH
      .replace(/#define NODE_MAJOR_VERSION \d+/, '#define NODE_MAJOR_VERSION 20')
      .replace(/#define NODE_MINOR_VERSION \d+/, '#define NODE_MINOR_VERSION 11')
      .replace(/#define NODE_PATCH_VERSION \d+/, '#define NODE_PATCH_VERSION 1');
    const old = await makeTarball('20.11.1', oldHeader);
    const oldOut = join(work, 'old-tree');
    const r = await run(BUILD_AGENT, ['--arch', buildArch, '--node-tarball', old, '--out', oldOut]);
    expect(r.code).to.not.equal(0);
    expect(r.stderr).to.match(/is Node 20\.11\.1, below the agent's minimum 20\.19/);
    expect(await readdir(work)).to.not.include('old-tree');
  });
});
