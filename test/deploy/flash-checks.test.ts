/**
 * What provisioning/flash refuses, and its pure parts: the first-boot route
 * (firstrun.sh, cmdline.txt, cloud-init user-data), partition detection, and
 * and whether an agent tree fits the Node and CPU that will run it.
 */
import { expect } from 'chai';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { elfMachine, readAgentTree } from '../../provisioning/flasher/agent-tree.js';
import { FlashError } from '../../provisioning/flasher/errors.js';
import { detectRoute, extendCmdline, extendFirstrun, extendUserData, newFirstrun, osCodename } from '../../provisioning/flasher/first-boot-route.js';
import { parseSfdiskJson } from '../../provisioning/flasher/partitions.js';
import { checkTreeForTarget, dpkgNodeVersion } from '../../provisioning/flasher/target-checks.js';
import { EM, makeAgentTree, makeBundle } from './flash-fixtures.js';
import { runFlash } from './run-flash.js';

function elfHeader(machine: number): Buffer {
  const b = Buffer.alloc(64);
  b.writeUInt32BE(0x7f454c46, 0);
  b[4] = 2;
  b[5] = 1; // little endian
  b.writeUInt16LE(machine, 18);
  return b;
}

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof FlashError ? err.code : `not a FlashError: ${String(err)}`;
  }
  return undefined;
}

describe('deploy/flash: refusals and first-boot route', () => {
  let work: string;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'flash-checks-'));
  });

  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('refuses an agent tree without sensor-agent.mjs, saying how to build it', async () => {
    const agent = join(work, 'no-cli');
    await makeAgentTree(agent, { noBundle: true });
    const bundle = await makeBundle(join(work, 'b1'), 'sensor-1');
    const ran = await runFlash(['--bundle', bundle.dir, '--image', join(work, 'none.img'), '--agent', agent]);
    expect(ran.code).to.equal(1);
    expect(ran.stderr).to.match(
      /E_AGENT: no built agent in .*: sensor-agent\.mjs is missing\. Build it with provisioning\/build-agent --arch arm64\|armv7\|x64/,
    );
  });

  it('refuses a tree of the old layout (dist/ + node_modules/), and one whose addon is for another CPU than its build info says', async () => {
    const old = join(work, 'old');
    await makeAgentTree(old, { noBundle: true });
    await mkdir(join(old, 'dist/agent'), { recursive: true });
    await writeFile(join(old, 'dist/agent/cli.js'), 'old\n');
    const bundle = await makeBundle(join(work, 'b2'), 'sensor-2');
    const ran = await runFlash(['--bundle', bundle.dir, '--image', join(work, 'none.img'), '--agent', old]);
    expect(ran.code).to.equal(1);
    expect(ran.stderr).to.match(/E_AGENT: .* is an agent tree of the old layout/);

    // npm_config_arch=arm64 used to build an x86-64 addon into an "arm64" tree: refused.
    const mixed = join(work, 'mixed');
    await makeAgentTree(mixed, { arch: 'arm64', addonMachine: EM.x86_64 });
    const ran2 = await runFlash(['--bundle', bundle.dir, '--image', join(work, 'none.img'), '--agent', mixed]);
    expect(ran2.code).to.equal(1);
    expect(ran2.stderr).to.match(
      /E_AGENT: .*native\/epoll\.node is built for x86-64, but the tree is for arm64 \(aarch64\)\. Rebuild it: provisioning\/build-agent --arch arm64/,
    );
  });

  it('refuses a startup snapshot without its snapshot.env, and one in a --node system tree (it loads only into the Node that wrote it)', async () => {
    const bundle = await makeBundle(join(work, 'b-snap'), 'sensor-snap');
    const lone = join(work, 'snap-lone');
    await makeAgentTree(lone);
    await writeFile(join(lone, 'sensor-agent.blob'), 'snapshot\n');
    const ran = await runFlash(['--bundle', bundle.dir, '--image', join(work, 'none.img'), '--agent', lone]);
    expect(ran.code).to.equal(1);
    expect(ran.stderr).to.match(/E_AGENT: .*sensor-agent\.blob and snapshot\.env come together, and only in a tree that ships its Node \(this one: npm\)/);

    const system = join(work, 'snap-system');
    await makeAgentTree(system, { node: 'system' });
    await writeFile(join(system, 'sensor-agent.blob'), 'snapshot\n');
    await writeFile(join(system, 'snapshot.env'), 'SENSOR_AGENT_SNAPSHOT=--snapshot-blob=/opt/sensor-agent/sensor-agent.blob\n');
    const ran2 = await runFlash(['--bundle', bundle.dir, '--image', join(work, 'none.img'), '--agent', system]);
    expect(ran2.code).to.equal(1);
    expect(ran2.stderr).to.match(/E_AGENT: .*only in a tree that ships its Node \(this one: system\)/);
  });

  it('refuses a bundle whose secrets other users can read, and a bad device id', async () => {
    const agent = join(work, 'ok');
    await makeAgentTree(agent);
    const bundle = await makeBundle(join(work, 'b3'), 'sensor-3');
    await chmod(join(bundle.dir, 'enroll.token'), 0o644);
    const ran = await runFlash(['--bundle', bundle.dir, '--image', join(work, 'none.img'), '--agent', agent]);
    expect(ran.code).to.equal(1);
    expect(ran.stderr).to.match(/E_BUNDLE: enrollment token .*enroll\.token has mode 0644: other users of this machine can read it\. Fix: chmod 600/);

    const bad = await makeBundle(join(work, 'b4'), 'sensor-4');
    await writeFile(join(bad.dir, 'config.json'), JSON.stringify({ device_id: '../etc', trust: 'trust.jwks', broker: {} }));
    const ran2 = await runFlash(['--bundle', bad.dir, '--image', join(work, 'none.img'), '--agent', agent]);
    expect(ran2.stderr).to.match(/E_BUNDLE: .*device_id must match/);
  });

  it('usage errors exit 2', async () => {
    const ran = await runFlash(['--image', 'x.img']);
    expect(ran.code).to.equal(2);
    expect(ran.stderr).to.match(/E_USAGE: --bundle DIR is required/);
  });

  it("a tree must match the target CPU, and (--node system) the image's Node version and ABI", async () => {
    expect(elfMachine(elfHeader(0xb7))).to.equal('aarch64');
    expect(elfMachine(elfHeader(0x28))).to.equal('arm');
    expect(elfMachine(Buffer.from('#!/bin/sh\n'))).to.equal('not-elf');
    const dir = join(work, 'arm64-npm');
    await makeAgentTree(dir, { arch: 'arm64' });
    const tree = await readAgentTree(dir);
    const facts = { systemNode: false, systemNodeVersion: undefined };
    expect(checkTreeForTarget(tree, { ...facts, machine: 'aarch64' })).to.deep.equal([]);
    expect(code(() => checkTreeForTarget(tree, { ...facts, machine: 'arm' }))).to.equal('E_AGENT');
    expect(() => checkTreeForTarget(tree, { ...facts, machine: 'arm' })).to.throw(
      /built for arm64 \(aarch64\) but the target's CPU is arm.*provisioning\/build-agent --arch armv7/,
    );
    expect(checkTreeForTarget(tree, { ...facts, machine: undefined })[0]).to.match(/cannot tell the image's CPU/);

    const sysDir = join(work, 'armv7-system');
    await makeAgentTree(sysDir, { arch: 'armv7', node: 'system', abi: '115' });
    const sys = await readAgentTree(sysDir);
    const on = (v: string | undefined, present = true): string[] => checkTreeForTarget(sys, { machine: 'arm', systemNode: present, systemNodeVersion: v });
    expect(on('20.19.2')).to.deep.equal([]);
    expect(() => on('18.20.4')).to.throw(/nodejs is 18\.20\.4, below the agent's minimum 20\.19\.0/);
    expect(() => on('20.18.1')).to.throw(/below the agent's minimum/);
    expect(() => on('22.12.0')).to.throw(/ABI 115.*ABI 127.*--system-node-version 22\.12\.0/);
    expect(() => on(undefined, false)).to.throw(/has no \/usr\/bin\/node/);
    expect(on(undefined)[0]).to.match(/cannot tell the version of the image's \/usr\/bin\/node/);
    // Without the addon only the version matters.
    const omitDir = join(work, 'armv7-omit');
    await makeAgentTree(omitDir, { arch: 'armv7', node: 'system', noAddon: true });
    expect(checkTreeForTarget(await readAgentTree(omitDir), { machine: 'arm', systemNode: true, systemNodeVersion: '22.12.0' })).to.deep.equal([]);
  });

  it('reads the nodejs version from a dpkg status file (installed only)', () => {
    const status = [
      'Package: nodejs\nStatus: deinstall ok config-files\nVersion: 18.19.0+dfsg-6~deb12u2\n',
      'Package: nodejs-doc\nStatus: install ok installed\nVersion: 20.19.2+dfsg-1\n',
      'Package: nodejs\nStatus: install ok installed\nPriority: optional\nVersion: 20.19.2+dfsg-1\n',
    ].join('\n');
    expect(dpkgNodeVersion(status)).to.equal('20.19.2');
    expect(dpkgNodeVersion('Package: nodejs\nStatus: install ok installed\nVersion: 22.12.0-1nodesource1\n')).to.equal('22.12.0');
    expect(dpkgNodeVersion(status.split('\n\n')[0])).to.equal(undefined);
    expect(dpkgNodeVersion(undefined)).to.equal(undefined);
  });

  it('finds the FAT boot and Linux root partitions, and refuses other layouts', () => {
    const json = JSON.stringify({
      partitiontable: {
        sectorsize: 512,
        partitions: [
          { start: 8192, size: 1048576, type: 'c' },
          { start: 1056768, size: 4000000, type: '83' },
        ],
      },
    });
    expect(parseSfdiskJson(json, 'x.img')).to.deep.equal({
      boot: { index: 1, offset: 8192 * 512, size: 1048576 * 512, type: 'c' },
      root: { index: 2, offset: 1056768 * 512, size: 4000000 * 512, type: '83' },
    });
    const gpt = JSON.stringify({
      partitiontable: {
        partitions: [
          { start: 2048, size: 10, type: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B' },
          { start: 4096, size: 10, type: '0FC63DAF-8483-4772-8E79-3D69D8477DE4' },
        ],
      },
    });
    expect(parseSfdiskJson(gpt, 'x.img').root.offset).to.equal(4096 * 512);
    expect(code(() => parseSfdiskJson(JSON.stringify({ partitiontable: { partitions: [{ start: 1, size: 1, type: '83' }] } }), 'x.img'))).to.equal('E_IMAGE');
  });

  it('chooses the first-boot route from the boot partition, then the release', () => {
    expect(detectRoute(['cmdline.txt', 'user-data'], 'bookworm', false).route).to.equal('cloud-init');
    expect(detectRoute(['cmdline.txt', 'firstrun.sh'], 'trixie', true).route).to.equal('firstrun');
    expect(detectRoute(['cmdline.txt'], 'bookworm', false).route).to.equal('firstrun');
    expect(detectRoute(['cmdline.txt'], 'trixie', false).route).to.equal('cloud-init');
    expect(detectRoute(['cmdline.txt'], undefined, true).route).to.equal('cloud-init');
    expect(detectRoute(['cmdline.txt'], undefined, false)).to.deep.equal({ route: 'firstrun', why: 'no release or cloud-init found: assuming Bookworm' });
    expect(osCodename('ID=debian\nVERSION_CODENAME=trixie\n')).to.equal('trixie');
    expect(osCodename('VERSION_CODENAME="bookworm"\n')).to.equal('bookworm');
  });

  it('extends firstrun.sh, cmdline.txt and user-data once, and refuses user-data it cannot edit safely', () => {
    const ours = newFirstrun();
    expect(extendFirstrun(ours)).to.equal(ours);
    const noRm = '#!/bin/bash\necho hi\nexit 0\n';
    expect(extendFirstrun(noRm).split('\n')).to.have.length(5);
    expect(extendFirstrun(noRm).split('\n')[2]).to.contain('sensor-agent-firstboot');
    const once = extendCmdline('a=b root=x\n');
    expect(extendCmdline(once)).to.equal(once);
    expect(once.trim().split('\n')).to.have.length(1);

    const block0 = '#cloud-config\nbootcmd:\n- echo a\n';
    expect(extendUserData(block0).split('\n')[2]).to.match(/^- 'if \[ -x/); // keeps the list's own indentation
    const noKey = '#cloud-config\nhostname: x';
    expect(extendUserData(noKey)).to.match(/^#cloud-config\nhostname: x\nbootcmd:\n {2}- 'if/);
    expect(extendUserData(extendUserData(noKey))).to.equal(extendUserData(noKey));
    expect(code(() => extendUserData('#!/bin/sh\necho x\n'))).to.equal('E_FIRST_BOOT');
    expect(code(() => extendUserData('#cloud-config\nbootcmd: [echo a]\n'))).to.equal('E_FIRST_BOOT');
  });
});
