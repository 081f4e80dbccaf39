/**
 * provisioning/flash as root: into a mounted root (--root), into an image
 * through loop devices, and the first boot of an image flashed without
 * privileges (the hand-over script run on its extracted root). Owners are
 * checked with the agent's uid/gid as systemd-sysusers allocated them.
 */
import { expect } from 'chai';
import { copyFile, lstat, mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { makeAgentTree, makeBundle, type FakeBundle } from './flash-fixtures.js';
import { catInImage, DEFAULT_CMDLINE, extractRoot, fsckRoot, IMAGE_TOOLS, makeImage, readFat, statInImage } from './image-fixture.js';
import { chownTree, NOBODY, runFlash } from './run-flash.js';
import { isRoot, requireTools, toolEnv } from './tools.js';
import { skipBecause } from '../helpers/skip.js';

const execFileP = promisify(execFile);

interface Owner {
  mode: string;
  uid: number;
  gid: number;
}

async function ownerOf(path: string): Promise<Owner | 'missing'> {
  try {
    const st = await lstat(path);
    return { mode: `0${(st.mode & 0o7777).toString(8)}`, uid: st.uid, gid: st.gid };
  } catch {
    return 'missing';
  }
}

function idsFrom(passwd: string, name: string): { uid: number; gid: number } {
  const line = passwd.split('\n').find((l) => l.startsWith(`${name}:`));
  if (line === undefined) throw new Error(`${name} not in passwd:\n${passwd}`);
  const [, , uid, gid] = line.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

/** The owners and modes the board must end up with, for agent ids. */
function finalLayout(uid: number, gid: number): Record<string, Owner> {
  return {
    '/etc/sensor-agent': { mode: '0750', uid: 0, gid },
    '/etc/sensor-agent/config.json': { mode: '0640', uid: 0, gid },
    '/etc/sensor-agent/trust.jwks': { mode: '0640', uid: 0, gid },
    '/etc/sensor-agent/release.jwks': { mode: '0640', uid: 0, gid },
    '/etc/sensor-agent/ca.pem': { mode: '0640', uid: 0, gid },
    '/etc/sensor-agent/client.crt': { mode: '0640', uid: 0, gid },
    '/etc/sensor-agent/client.key': { mode: '0600', uid, gid },
    '/var/lib/sensor-agent': { mode: '0700', uid, gid },
    '/var/lib/sensor-agent/keys': { mode: '0700', uid, gid },
    '/var/lib/sensor-agent/keys/signing.jwk': { mode: '0600', uid, gid },
    '/var/lib/sensor-agent/state': { mode: '0700', uid, gid },
    '/var/lib/sensor-agent/enroll.token': { mode: '0600', uid, gid },
    '/opt/sensor-agent/sensor-agent.mjs': { mode: '0755', uid: 0, gid: 0 },
    '/opt/sensor-agent/node/bin/node': { mode: '0755', uid: 0, gid: 0 },
    '/etc/systemd/system/sensor-agent.service': { mode: '0644', uid: 0, gid: 0 },
    '/usr/local/lib/sensor-agent/firstboot': { mode: '0755', uid: 0, gid: 0 },
    '/usr/lib/sensor-agent/upgrade-guard': { mode: '0755', uid: 0, gid: 0 },
    '/opt/sensor-agent-releases/0.1.0': { mode: '0755', uid: 0, gid: 0 },
  };
}

describe('deploy/flash as root: mounted root, loop devices, first boot', function () {
  let work: string;
  let agentDir: string;
  let bundle: FakeBundle;

  before(async function () {
    if (!isRoot()) skipBecause(this, 'not root: these routes need root by design; the unprivileged route is tested elsewhere');
    requireTools(this, 'REQUIRE_SYSTEMD_ANALYZE', ['systemd-sysusers']);
    work = await mkdtemp(join(tmpdir(), 'flash-root-'));
    agentDir = join(work, 'agent');
    // For this machine's CPU: the roots here carry a copy of its /usr/bin/env, which flash reads.
    await makeAgentTree(agentDir, { arch: process.arch === 'arm64' ? 'arm64' : process.arch === 'arm' ? 'armv7' : 'x64' });
    bundle = await makeBundle(join(work, 'bundle'), 'sensor-0042', { keys: true });
  });

  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  async function makeRoot(name: string): Promise<string> {
    const root = join(work, name);
    await mkdir(join(root, 'etc'), { recursive: true });
    await mkdir(join(root, 'usr/bin'), { recursive: true });
    await writeFile(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000::/home/pi:/bin/bash\n');
    await writeFile(join(root, 'etc/group'), 'root:x:0:\ngpio:x:997:pi\npi:x:1000:\n');
    await writeFile(join(root, 'usr/bin/node'), '#!/bin/sh\n', { mode: 0o755 });
    await copyFile('/usr/bin/env', join(root, 'usr/bin/env'));
    return root;
  }

  it('--root: installs and hands the files to the sensor-agent user at once (systemd-sysusers --root)', async () => {
    const root = await makeRoot('root1');
    const ran = await runFlash(['--bundle', bundle.dir, '--root', root, '--agent', agentDir]);
    expect(ran.code, ran.stderr).to.equal(0);
    const passwd = await readFile(join(root, 'etc/passwd'), 'utf8');
    const { uid, gid } = idsFrom(passwd, 'sensor-agent');
    expect(uid).to.be.within(1, 999);
    expect(ran.stdout).to.contain(`files handed to sensor-agent (uid ${uid}, gid ${gid})`);
    expect(await readFile(join(root, 'etc/group'), 'utf8')).to.match(/^gpio:x:997:pi,sensor-agent$/m);
    const expected = finalLayout(uid, gid);
    const actual: Record<string, Owner | 'missing'> = {};
    for (const p of Object.keys(expected)) actual[p] = await ownerOf(join(root, p));
    expect(actual).to.deep.equal(expected);
    expect(await ownerOf(join(root, 'etc/sensor-agent/firstboot.pending'))).to.equal('missing');
    expect(await readlink(join(root, 'etc/systemd/system/multi-user.target.wants/sensor-agent.service'))).to.equal('/etc/systemd/system/sensor-agent.service');
    expect(await readFile(join(root, 'var/lib/sensor-agent/enroll.token'), 'utf8')).to.equal(`${bundle.token}\n`);
    // The release layout the upgrade guard switches: a relative link to the tree of .build-info.json's agent_version.
    expect(await readlink(join(root, 'opt/sensor-agent'))).to.equal('sensor-agent-releases/0.1.0');
    expect(await readlink(join(root, 'etc/systemd/system/paths.target.wants/sensor-agent-upgrade.path'))).to.equal(
      '/etc/systemd/system/sensor-agent-upgrade.path',
    );
  });

  it('--root refuses to write through a symlink that leaves the target, and without root', async () => {
    const root = await makeRoot('root2');
    const outside = join(work, 'outside');
    await mkdir(outside);
    await mkdir(join(root, 'var'));
    await symlink(outside, join(root, 'var/lib'));
    const ran = await runFlash(['--bundle', bundle.dir, '--root', root, '--agent', agentDir]);
    expect(ran.code).to.equal(1);
    expect(ran.stderr).to.match(/E_TARGET: .*var\/lib is a symlink/);
    expect(await ownerOf(join(outside, 'sensor-agent'))).to.equal('missing');

    const root3 = await makeRoot('root3');
    await chownTree(work, NOBODY);
    const unprivileged = await runFlash(['--bundle', bundle.dir, '--root', root3, '--agent', agentDir], { unprivileged: true });
    expect(unprivileged.code).to.equal(1);
    expect(unprivileged.stderr).to.match(/E_PRIVILEGE: --root needs root privileges/);
    await chownTree(work, 0);
  });

  it('--image with loop devices: owners final in the image, boot partition untouched', async function () {
    requireTools(this, 'REQUIRE_IMAGE_TOOLS', [...IMAGE_TOOLS, 'losetup', 'mount']);
    const image = join(work, 'loop.img');
    await makeImage(image, { codename: 'bookworm' });
    const ran = await runFlash(['--bundle', bundle.dir, '--image', image, '--agent', agentDir, '--method', 'auto']);
    if (ran.code === 0 && !/\(loop,/.test(ran.stdout)) skipBecause(this, 'no usable loop devices here (auto fell back to debugfs)');
    expect(ran.code, ran.stderr).to.equal(0);
    const { uid, gid } = idsFrom(await catInImage(image, '/etc/passwd'), 'sensor-agent');
    const expected = finalLayout(uid, gid);
    const stats = await statInImage(image, Object.keys(expected));
    const actual: Record<string, Owner | 'missing'> = {};
    for (const p of Object.keys(expected)) {
      const s = stats.get(p);
      actual[p] = s === undefined ? 'missing' : { mode: `0${s.mode.toString(8)}`, uid: s.uid, gid: s.gid };
    }
    expect(actual).to.deep.equal(expected);
    expect((await statInImage(image, ['/etc/sensor-agent/firstboot.pending'])).get('/etc/sensor-agent/firstboot.pending')).to.equal(undefined);
    const fat = await readFat(image);
    expect(fat.get('cmdline.txt')).to.equal(`${DEFAULT_CMDLINE}\n`);
    expect(fat.has('firstrun.sh')).to.equal(false);
    await fsckRoot(image);
  });

  it('first boot of an image flashed without privileges: the hand-over creates the user, gives it its files, consumes the boot partition drop-in', async function () {
    requireTools(this, 'REQUIRE_IMAGE_TOOLS', IMAGE_TOOLS);
    const image = join(work, 'firstboot.img');
    await makeImage(image, { codename: 'bookworm' });
    await chownTree(work, NOBODY);
    const ran = await runFlash(['--bundle', bundle.dir, '--image', image, '--agent', agentDir, '--method', 'debugfs'], { unprivileged: true });
    await chownTree(work, 0);
    expect(ran.code, ran.stderr).to.equal(0);

    // The board's first boot, on a copy of its root: a refreshed token left on the boot partition, plus a stray file.
    const root = join(work, 'booted');
    await mkdir(root);
    await extractRoot(image, root);
    expect(await ownerOf(join(root, 'etc/sensor-agent/client.key'))).to.deep.equal({ mode: '0600', uid: 0, gid: 0 });
    const drop = join(root, 'boot/firmware/sensor-agent');
    await mkdir(drop, { recursive: true });
    await writeFile(join(drop, 'enroll.token'), 'refreshed-token\n', { mode: 0o644 }); // FAT: no permissions
    await writeFile(join(drop, 'notes.txt'), 'stray\n');
    const firstboot = join(root, 'usr/local/lib/sensor-agent/firstboot');
    const boot = await execFileP('sh', [firstboot, '--root', root], { env: toolEnv() });
    expect(boot.stderr).to.match(/hand-over complete/);
    expect(boot.stderr).to.match(/deleting unknown file .*notes\.txt/);

    const { uid, gid } = idsFrom(await readFile(join(root, 'etc/passwd'), 'utf8'), 'sensor-agent');
    const expected = finalLayout(uid, gid);
    const actual: Record<string, Owner | 'missing'> = {};
    for (const p of Object.keys(expected)) actual[p] = await ownerOf(join(root, p));
    expect(actual).to.deep.equal(expected);
    expect(await readFile(join(root, 'var/lib/sensor-agent/enroll.token'), 'utf8')).to.equal('refreshed-token\n');
    expect(await ownerOf(drop)).to.equal('missing');
    expect(await ownerOf(join(root, 'etc/sensor-agent/firstboot.pending'))).to.equal('missing');

    const again = await execFileP('sh', [firstboot, '--root', root], { env: toolEnv() });
    expect(again.stderr).to.match(/nothing to do/);
  });
});
