/**
 * provisioning/flash into a two-partition image (FAT boot + ext4 root) built
 * here with Debian tools, read back independently: contents, modes, owners,
 * the first-boot route on the boot partition, and that no secret is on FAT.
 * As root the unprivileged route still runs unprivileged (setpriv to
 * nobody), so "without root privileges" is what is tested.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateConfig } from '../../agent/config.js';
import { parseFlashArgs } from '../../provisioning/flasher/cli.js';
import { makeAgentTree, makeBundle, type FakeBundle } from './flash-fixtures.js';
import {
  catInImage,
  DEFAULT_CMDLINE,
  fsckRoot,
  IMAGE_TOOLS,
  lsInImage,
  makeImage,
  readFat,
  readlinkInImage,
  statInImage,
  type InodeInfo,
} from './image-fixture.js';
import { chownTree, NOBODY, runFlash, type Ran } from './run-flash.js';
import { isRoot, requireTools } from './tools.js';

function mode(info: InodeInfo | undefined): string {
  return info === undefined ? 'missing' : `${info.type} 0${info.mode.toString(8)} ${info.uid}:${info.gid}`;
}

describe('deploy/flash: Raspberry Pi OS image without root privileges (debugfs + mtools)', function () {
  let work: string;
  let agentDir: string;
  let bundle: FakeBundle;

  before(async function () {
    requireTools(this, 'REQUIRE_IMAGE_TOOLS', IMAGE_TOOLS);
    work = await mkdtemp(join(tmpdir(), 'flash-image-'));
    agentDir = join(work, 'agent');
    await makeAgentTree(agentDir);
    bundle = await makeBundle(join(work, 'bundle'), 'sensor-0001', { keys: true, hooks: true });
  });

  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** Makes an image, flashes it as an unprivileged user, returns its path. */
  async function flashed(name: string, spec: Parameters<typeof makeImage>[1], extra: string[] = []): Promise<{ image: string; ran: Ran }> {
    const image = join(work, `${name}.img`);
    await makeImage(image, spec);
    if (isRoot()) await chownTree(work, NOBODY);
    const ran = await runFlash(['--bundle', bundle.dir, '--image', image, '--agent', agentDir, '--method', 'debugfs', ...extra], { unprivileged: true });
    return { image, ran };
  }

  it('the CLI parses its flags (and the test compiles the flasher)', () => {
    expect(parseFlashArgs(['--bundle', 'b', '--image', 'x.img'])).to.deep.equal({ bundle: 'b', image: 'x.img' });
    expect(parseFlashArgs(['--help'])).to.equal(undefined);
    expect(() => parseFlashArgs(['--bundle', 'b'])).to.throw(/exactly one target/);
    expect(() => parseFlashArgs(['--bundle', 'b', '--root', 'r', '--image', 'i'])).to.throw(/exactly one target/);
    expect(() => parseFlashArgs(['--bundle', 'b', '--image', 'i', '--method', 'dd'])).to.throw(/--method must be one of/);
  });

  it('Bookworm image: installs agent, units, config and secrets with their modes, root-owned until first boot; hooks firstrun.sh', async () => {
    const { image, ran } = await flashed('bookworm', { codename: 'bookworm' });
    expect(ran.code, ran.stderr).to.equal(0);
    expect(ran.stdout).to.match(/first boot through firstrun \(the image is bookworm\)/);

    const expected: Record<string, string> = {
      // The tree is release 0.1.0 (its .build-info.json agent_version); /opt/sensor-agent links to it.
      '/opt/sensor-agent': 'symlink 0777 0:0',
      '/opt/sensor-agent-releases': 'directory 0755 0:0',
      '/opt/sensor-agent-releases/0.1.0': 'directory 0755 0:0',
      '/opt/sensor-agent-releases/0.1.0/sensor-agent.mjs': 'regular 0755 0:0',
      '/opt/sensor-agent/sensor-agent.mjs': 'regular 0755 0:0',
      '/opt/sensor-agent/native/epoll.node': 'regular 0755 0:0',
      '/opt/sensor-agent/node/bin/node': 'regular 0755 0:0',
      '/opt/sensor-agent/.build-info.json': 'regular 0644 0:0',
      '/opt/sensor-agent/stray': 'missing',
      '/etc/systemd/system/sensor-agent.service': 'regular 0644 0:0',
      '/etc/systemd/system/sensor-agent-firstboot.service': 'regular 0644 0:0',
      '/etc/systemd/system/sensor-agent-upgrade.service': 'regular 0644 0:0',
      '/etc/systemd/system/sensor-agent-upgrade.path': 'regular 0644 0:0',
      '/etc/systemd/system/multi-user.target.wants/sensor-agent-upgrade.service': 'symlink 0777 0:0',
      '/etc/systemd/system/paths.target.wants/sensor-agent-upgrade.path': 'symlink 0777 0:0',
      '/usr/lib/sensor-agent/upgrade-guard': 'regular 0755 0:0',
      '/etc/sysusers.d/sensor-agent.conf': 'regular 0644 0:0',
      '/usr/local/lib/sensor-agent/firstboot': 'regular 0755 0:0',
      '/usr/local/bin/sensor-agent': 'regular 0755 0:0',
      // Staged: owned by root until the first boot creates the user; modes final.
      '/etc/sensor-agent': 'directory 0750 0:0',
      '/etc/sensor-agent/config.json': 'regular 0640 0:0',
      '/etc/sensor-agent/trust.jwks': 'regular 0640 0:0',
      '/etc/sensor-agent/release.jwks': 'regular 0640 0:0',
      '/etc/sensor-agent/ca.pem': 'regular 0640 0:0',
      '/etc/sensor-agent/client.crt': 'regular 0640 0:0',
      '/etc/sensor-agent/client.key': 'regular 0600 0:0',
      '/etc/sensor-agent/hooks/update': 'regular 0755 0:0',
      '/etc/sensor-agent/firstboot.pending': 'regular 0600 0:0',
      '/var/lib/sensor-agent': 'directory 0700 0:0',
      '/var/lib/sensor-agent/keys': 'directory 0700 0:0',
      '/var/lib/sensor-agent/keys/signing.jwk': 'regular 0600 0:0',
      '/var/lib/sensor-agent/keys/encryption.jwk': 'regular 0600 0:0',
      '/var/lib/sensor-agent/state': 'directory 0700 0:0',
      '/var/lib/sensor-agent/enroll.token': 'regular 0600 0:0',
      '/etc/systemd/system/multi-user.target.wants/sensor-agent.service': 'symlink 0777 0:0',
    };
    const stats = await statInImage(image, Object.keys(expected));
    const actual = Object.fromEntries(Object.keys(expected).map((p) => [p, mode(stats.get(p))]));
    expect(actual).to.deep.equal(expected);
    expect(await readlinkInImage(image, '/etc/systemd/system/multi-user.target.wants/sensor-agent.service')).to.equal(
      '/etc/systemd/system/sensor-agent.service',
    );
    expect(await readlinkInImage(image, '/opt/sensor-agent')).to.equal('sensor-agent-releases/0.1.0');
    expect(await readlinkInImage(image, '/etc/systemd/system/paths.target.wants/sensor-agent-upgrade.path')).to.equal(
      '/etc/systemd/system/sensor-agent-upgrade.path',
    );

    // Contents: the bundle's secrets byte for byte, the config pointed at the board's paths.
    expect(await catInImage(image, '/var/lib/sensor-agent/enroll.token')).to.equal(`${bundle.token}\n`);
    expect(await catInImage(image, '/etc/sensor-agent/client.key')).to.equal(bundle.clientKey);
    expect(await catInImage(image, '/var/lib/sensor-agent/keys/signing.jwk')).to.equal(`${bundle.signingKey}\n`);
    const config = JSON.parse(await catInImage(image, '/etc/sensor-agent/config.json')) as Record<string, unknown>;
    expect(config).to.deep.include({
      device_id: 'sensor-0001',
      trust: 'trust.jwks',
      keystore: '/var/lib/sensor-agent/keys',
      state_dir: '/var/lib/sensor-agent/state',
      enrollment_token: '/var/lib/sensor-agent/enroll.token',
      hooks_dir: '/etc/sensor-agent/hooks',
    });
    expect(config.broker).to.deep.include({ url: 'mqtts://broker.example.net:8883', ca: 'ca.pem', cert: 'client.crt', key: 'client.key' });
    // The agent's own validator accepts it, and resolves every path to the board's layout.
    const resolved = validateConfig(config, '/etc/sensor-agent/config.json');
    expect([resolved.trust, resolved.broker.ca, resolved.broker.key, resolved.keystore, resolved.enrollment_token]).to.deep.equal([
      '/etc/sensor-agent/trust.jwks',
      '/etc/sensor-agent/ca.pem',
      '/etc/sensor-agent/client.key',
      '/var/lib/sensor-agent/keys',
      '/var/lib/sensor-agent/enroll.token',
    ]);
    expect(await catInImage(image, '/etc/systemd/system/sensor-agent.service')).to.contain(
      'ExecStart=/opt/sensor-agent/node/bin/node --max-semi-space-size=1 --single-threaded --jitless --expose-gc $SENSOR_AGENT_SNAPSHOT /opt/sensor-agent/sensor-agent.mjs run',
    );

    // Nothing in the agent's config or state directories is readable by others.
    for (const dir of ['/etc/sensor-agent', '/var/lib/sensor-agent', '/var/lib/sensor-agent/keys']) {
      const names = await lsInImage(image, dir);
      const st = await statInImage(
        image,
        names.map((n) => `${dir}/${n}`),
      );
      for (const [p, info] of st) if (info?.type === 'regular' && !p.includes('/hooks')) expect(info.mode & 0o007, p).to.equal(0);
    }

    // Boot partition: our firstrun.sh and Imager's kernel arguments; no secret anywhere on FAT.
    const fat = await readFat(image);
    expect(fat.get('firstrun.sh')).to.contain('/usr/local/lib/sensor-agent/firstboot').and.to.contain('rm -f /boot/firmware/firstrun.sh');
    expect(fat.get('cmdline.txt')).to.equal(
      `${DEFAULT_CMDLINE} systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n`,
    );
    expect(fat.has('user-data')).to.equal(false);
    for (const [name, content] of fat) {
      for (const secret of [bundle.token, 'client-key-of', 'secret-d-of']) expect(content, `${name} on FAT`).to.not.contain(secret);
    }
    await fsckRoot(image);
  });

  it('Bookworm image customised by Raspberry Pi Imager: the hook goes into its firstrun.sh before it removes itself', async () => {
    const imagerFirstrun =
      '#!/bin/bash\n\nset +e\n\nCURRENT_HOSTNAME=`cat /etc/hostname | tr -d " \\t\\n\\r"`\necho sensor >/etc/hostname\nrm -f /boot/firstrun.sh\nsed -i \'s| systemd.run.*||g\' /boot/cmdline.txt\nexit 0\n';
    const cmdline = `${DEFAULT_CMDLINE} systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n`;
    const { image, ran } = await flashed('imager-bookworm', { codename: 'bookworm', boot: { 'firstrun.sh': imagerFirstrun, 'cmdline.txt': cmdline } });
    expect(ran.code, ran.stderr).to.equal(0);
    const fat = await readFat(image);
    const lines = (fat.get('firstrun.sh') ?? '').split('\n');
    const hook = lines.findIndex((l) => l.includes('/usr/local/lib/sensor-agent/firstboot'));
    expect(hook).to.be.greaterThan(lines.indexOf('echo sensor >/etc/hostname'));
    expect(hook).to.equal(lines.indexOf('rm -f /boot/firstrun.sh') - 1);
    expect(fat.get('cmdline.txt')).to.equal(cmdline); // already has systemd.run=
  });

  it('Trixie image with cloud-init user-data: the hook joins its bootcmd list; meta-data untouched', async () => {
    const userData = '#cloud-config\nhostname: sensor\nbootcmd:\n  - echo early\nusers:\n  - name: pi\n';
    const { image, ran } = await flashed('trixie', { codename: 'trixie', boot: { 'user-data': userData, 'meta-data': 'instance-id: rpi-imager-1\n' } });
    expect(ran.code, ran.stderr).to.equal(0);
    expect(ran.stdout).to.match(/first boot through cloud-init/);
    const fat = await readFat(image);
    const lines = (fat.get('user-data') ?? '').split('\n');
    expect(lines.slice(0, 3)).to.deep.equal(['#cloud-config', 'hostname: sensor', 'bootcmd:']);
    expect(lines[3]).to.match(/^ {2}- 'if \[ -x \/usr\/local\/lib\/sensor-agent\/firstboot \]; then \/usr\/local\/lib\/sensor-agent\/firstboot; fi'/);
    expect(lines.slice(4)).to.deep.equal(['  - echo early', 'users:', '  - name: pi', '']);
    expect(fat.get('meta-data')).to.equal('instance-id: rpi-imager-1\n');
    expect(fat.get('cmdline.txt')).to.equal(`${DEFAULT_CMDLINE}\n`);
    expect(fat.has('firstrun.sh')).to.equal(false);
  });

  it('Trixie image without user-data: writes a #cloud-config user-data with the hook and a meta-data', async () => {
    const { image, ran } = await flashed('trixie-plain', { codename: 'trixie' });
    expect(ran.code, ran.stderr).to.equal(0);
    const fat = await readFat(image);
    expect(fat.get('user-data')).to.match(/^#cloud-config\n(#.*\n)*bootcmd:\n {2}- 'if \[ -x/);
    expect(fat.get('meta-data')).to.equal('instance-id: sensor-agent-sensor-0001\n');
  });

  it('re-flashing replaces the previous device: its keys, state and config are gone', async () => {
    const { image, ran } = await flashed('reflash', { codename: 'bookworm' });
    expect(ran.code, ran.stderr).to.equal(0);
    const other = await makeBundle(join(work, 'bundle2'), 'sensor-0002'); // no host keys, no hooks
    if (isRoot()) await chownTree(work, NOBODY);
    const again = await runFlash(['--bundle', other.dir, '--image', image, '--agent', agentDir, '--method', 'debugfs'], { unprivileged: true });
    expect(again.code, again.stderr).to.equal(0);
    expect(JSON.parse(await catInImage(image, '/etc/sensor-agent/config.json'))).to.have.property('device_id', 'sensor-0002');
    expect(await lsInImage(image, '/var/lib/sensor-agent/keys')).to.deep.equal([]);
    expect(await lsInImage(image, '/etc/sensor-agent')).to.not.include('hooks');
    expect(await catInImage(image, '/var/lib/sensor-agent/enroll.token')).to.equal(`${other.token}\n`);
    const fat = await readFat(image);
    expect((fat.get('firstrun.sh') ?? '').match(/sensor-agent-firstboot/g)).to.have.length(1);
    expect((fat.get('cmdline.txt') ?? '').match(/systemd\.run=/g)).to.have.length(1);
    await fsckRoot(image);
  });

  it('a tree with its own Node needs none on the image', async () => {
    const { ran } = await flashed('nonode', { codename: 'trixie', noNode: true });
    expect(ran.code, ran.stderr).to.equal(0);
    expect(ran.stdout).to.not.match(/warning: .*\bnode\b/i);
  });

  describe('a tree built with --node system', () => {
    let systemTree: string;
    before(async () => {
      systemTree = join(work, 'agent-system');
      await makeAgentTree(systemTree, { arch: 'arm64', node: 'system', abi: '115' });
    });
    const dpkg = (version: string): string =>
      `Package: bash\nStatus: install ok installed\nVersion: 5.2.37-2\n\nPackage: nodejs\nStatus: install ok installed\nArchitecture: arm64\nVersion: ${version}\n\n`;

    it("Trixie (nodejs 20.19.2): installs, the unit's node path links to /usr/bin/node", async () => {
      const { image, ran } = await flashed('sys-trixie', { codename: 'trixie', root: { 'var/lib/dpkg/status': dpkg('20.19.2+dfsg-1') } }, [
        '--agent',
        systemTree,
      ]);
      expect(ran.code, ran.stderr).to.equal(0);
      expect(await readlinkInImage(image, '/opt/sensor-agent/node/bin/node')).to.equal('/usr/bin/node');
      const stats = await statInImage(image, ['/opt/sensor-agent/sensor-agent.mjs', '/opt/sensor-agent/node/bin']);
      expect(mode(stats.get('/opt/sensor-agent/node/bin'))).to.equal('directory 0755 0:0');
    });

    it('Bookworm (nodejs 18.20): refused with the fix, the image unchanged', async () => {
      const { image, ran } = await flashed('sys-bookworm', { codename: 'bookworm', root: { 'var/lib/dpkg/status': dpkg('18.20.4+dfsg-1~deb12u1') } }, [
        '--agent',
        systemTree,
      ]);
      expect(ran.code).to.equal(1);
      expect(ran.stderr).to.match(/E_AGENT: the image's nodejs is 18\.20\.4, below the agent's minimum 20\.19\.0.*provisioning\/build-agent --arch arm64/);
      expect(mode((await statInImage(image, ['/opt/sensor-agent'])).get('/opt/sensor-agent'))).to.equal('missing');
    });

    it('refused on an image without Node, and on a Node of another ABI than the addon', async () => {
      const none = await flashed('sys-none', { codename: 'trixie', noNode: true }, ['--agent', systemTree]);
      expect(none.ran.code).to.equal(1);
      expect(none.ran.stderr).to.match(/E_AGENT: .*built with --node system.*has no \/usr\/bin\/node/);
      const n22 = await flashed('sys-22', { codename: 'trixie', root: { 'var/lib/dpkg/status': dpkg('22.12.0-1nodesource1') } }, ['--agent', systemTree]);
      expect(n22.ran.code).to.equal(1);
      expect(n22.ran.stderr).to.match(/ABI 115.*22\.12\.0 \(ABI 127\).*--system-node-version 22\.12\.0/);
    });
  });
});
