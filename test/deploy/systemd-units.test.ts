/**
 * The systemd units as systemd itself reads them: `systemd-analyze verify`
 * (exit 0 is not enough, it exits 0 on unknown keys: any output fails) and
 * `systemd-analyze security --offline=true` (exposure 1.5 or lower), plus
 * the sysusers file through `systemd-sysusers --root`.
 *
 * How verify is made independent of this machine: it checks that ExecStart's
 * binary exists and loads every unit the service depends on, so it runs with
 * `--root=<temp dir>` holding the units where flash installs them
 * (etc/systemd/system), a copy of this machine's own unit directory (for
 * network-online.target, sysinit.target...), a stub /usr/bin/node and the
 * real first-boot script. Nothing outside the temp root is read or needed.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { chmod, copyFile, cp, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { AGENT_NODE_ENV, AGENT_NODE_FLAGS } from '../helpers/agent-process.js';
import { SNAPSHOT_ENV_FILE, SNAPSHOT_ENV_VAR, SNAPSHOT_NODE_FLAGS } from '../../provisioning/builder/snapshot.js';
import { PROVISIONING_DIR, SYSTEMD_DIR } from './repo-paths.js';
import { requireTools, toolEnv } from './tools.js';

const run = promisify(execFile);
const EXPOSURE_BOUND = 1.5;
const UNITS = [
  'sensor-agent.service',
  'provision-server.service',
  'sensor-agent-firstboot.service',
  'sensor-agent-upgrade.service',
  'sensor-agent-upgrade.path',
] as const;
const HARDENED = ['sensor-agent.service', 'provision-server.service', 'sensor-agent-upgrade.service'] as const;

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

async function runTool(file: string, args: string[]): Promise<Ran> {
  try {
    const { stdout, stderr } = await run(file, args, { env: toolEnv(), maxBuffer: 4 * 1024 * 1024 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw err;
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** The host's packaged unit directory (Debian: /usr/lib/systemd/system, /lib is a link on merged-/usr). */
async function hostUnitDir(): Promise<string> {
  for (const dir of ['/usr/lib/systemd/system', '/lib/systemd/system']) {
    try {
      if ((await stat(join(dir, 'multi-user.target'))).isFile()) return dir;
    } catch {
      // next
    }
  }
  throw new Error('no systemd unit directory with multi-user.target on this machine');
}

/** Minimal unit-file reader: [section] -> key -> values (in order; repeated keys accumulate). */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      current = new Map();
      sections.set(header[1] ?? '', current);
      continue;
    }
    const eq = line.indexOf('=');
    if (eq < 0 || current === undefined) throw new Error(`unparsable unit line: ${raw}`);
    const key = line.slice(0, eq);
    const values = current.get(key) ?? [];
    values.push(line.slice(eq + 1));
    current.set(key, values);
  }
  return sections;
}

function only(unit: Map<string, Map<string, string[]>>, section: string, key: string): string {
  const values = unit.get(section)?.get(key) ?? [];
  expect(values, `${section}/${key}`).to.have.length(1);
  return values[0] ?? '';
}

describe('deploy/systemd units', function () {
  let analyze: string;
  let root: string;

  before(async function () {
    ({ 'systemd-analyze': analyze = '' } = requireTools(this, 'REQUIRE_SYSTEMD_ANALYZE', ['systemd-analyze']));
    root = await mkdtemp(join(tmpdir(), 'units-root-'));
    const unitDir = join(root, 'etc/systemd/system');
    await mkdir(unitDir, { recursive: true });
    await cp(await hostUnitDir(), join(root, 'usr/lib/systemd/system'), { recursive: true, dereference: false });
    for (const unit of UNITS) await copyFile(join(SYSTEMD_DIR, unit), join(unitDir, unit));
    await mkdir(join(root, 'usr/bin'), { recursive: true });
    await writeFile(join(root, 'usr/bin/node'), '#!/bin/sh\nexit 1\n', { mode: 0o755 });
    // The agent's unit runs the agent tree's own Node (provisioning/build-agent).
    await mkdir(join(root, 'opt/sensor-agent/node/bin'), { recursive: true });
    await writeFile(join(root, 'opt/sensor-agent/node/bin/node'), '#!/bin/sh\nexit 1\n', { mode: 0o755 });
    await mkdir(join(root, 'usr/local/lib/sensor-agent'), { recursive: true });
    await copyFile(join(PROVISIONING_DIR, 'firstboot'), join(root, 'usr/local/lib/sensor-agent/firstboot'));
    await chmod(join(root, 'usr/local/lib/sensor-agent/firstboot'), 0o755);
    await mkdir(join(root, 'usr/lib/sensor-agent'), { recursive: true });
    await copyFile(join(PROVISIONING_DIR, 'upgrade-guard'), join(root, 'usr/lib/sensor-agent/upgrade-guard'));
    await chmod(join(root, 'usr/lib/sensor-agent/upgrade-guard'), 0o755);
  });

  after(async () => {
    if (root) await rm(root, { recursive: true, force: true });
  });

  async function verify(unit: string): Promise<Ran> {
    return runTool(analyze, ['verify', '--man=no', `--root=${root}`, unit]);
  }

  async function exposure(unit: string): Promise<number> {
    const r = await runTool(analyze, ['security', '--offline=true', '--no-pager', `--root=${root}`, unit]);
    expect(r.code, r.stderr).to.equal(0);
    const m = /Overall exposure level for \S+: (\d+\.\d)/.exec(r.stdout);
    expect(m, r.stdout).to.not.equal(null);
    return Number(m?.[1]);
  }

  for (const unit of UNITS) {
    it(`${unit}: systemd-analyze verify reports nothing`, async () => {
      const r = await verify(unit);
      expect(r.stderr, 'verify stderr').to.equal('');
      expect(r.stdout, 'verify stdout').to.equal('');
      expect(r.code).to.equal(0);
    });
  }

  for (const unit of HARDENED) {
    it(`${unit}: exposure ${EXPOSURE_BOUND} or lower (systemd-analyze security --offline=true)`, async function () {
      const level = await exposure(unit);
      // Printed for the record: the report quotes these numbers.
      console.log(`      exposure of ${unit}: ${level.toFixed(1)}`);
      expect(level).to.be.at.most(EXPOSURE_BOUND);
      // And systemd's own threshold check agrees (scale 0..100).
      const r = await runTool(analyze, ['security', '--offline=true', '--no-pager', `--threshold=${EXPOSURE_BOUND * 10}`, `--root=${root}`, unit]);
      expect(r.code, r.stdout).to.equal(0);
    });
  }

  it('the checks can fail: an unknown key and a missing binary are reported, an unhardened copy scores high', async () => {
    const unitDir = join(root, 'etc/systemd/system');
    const text = await readFile(join(SYSTEMD_DIR, 'sensor-agent.service'), 'utf8');
    await writeFile(join(unitDir, 'typo-check.service'), text.replace('ProtectHome=yes', 'ProtectHome=yes\nProtectHomes=yes'));
    const typo = await verify('typo-check.service');
    expect(typo.code).to.equal(0); // systemd only warns...
    expect(typo.stderr).to.match(/Unknown key 'ProtectHomes'/); // ...which is why stderr is checked

    await writeFile(
      join(unitDir, 'nobin-check.service'),
      text.replace('ExecStart=/opt/sensor-agent/node/bin/node', 'ExecStart=/opt/sensor-agent/node/bin/nodejs-missing'),
    );
    expect((await verify('nobin-check.service')).stderr).to.match(/is not executable/);

    const bare = text
      .split('\n')
      .filter(
        (l) =>
          !/^(Protect|Private|Restrict|SystemCall|CapabilityBoundingSet|NoNewPrivileges|LockPersonality|RemoveIPC|UMask|DevicePolicy|ProcSubset|KeyringMode|ReadWritePaths)/.test(
            l,
          ),
      );
    await writeFile(join(unitDir, 'bare-check.service'), bare.join('\n'));
    expect(await exposure('bare-check.service')).to.be.above(5);
  });

  it('sensor-agent.service: the agent contract (notify, restart policy, directories, umask)', async () => {
    const unit = parseUnit(await readFile(join(SYSTEMD_DIR, 'sensor-agent.service'), 'utf8'));
    // The V8 flags are the ones the tests and the benchmark run the agent with.
    // It runs the shipped tree (docs/CONTRACTS.md, "Agent tree"): its Node and its one-file agent.
    expect(only(unit, 'Service', 'ExecStart')).to.equal(
      `/opt/sensor-agent/node/bin/node ${AGENT_NODE_FLAGS.join(' ')} $${SNAPSHOT_ENV_VAR} /opt/sensor-agent/sensor-agent.mjs run --config /etc/sensor-agent/config.json`,
    );
    // The startup snapshot is built with the same flags, and used only where the tree has one (snapshot.env).
    expect(SNAPSHOT_NODE_FLAGS).to.deep.equal(AGENT_NODE_FLAGS);
    expect(only(unit, 'Service', 'EnvironmentFile')).to.equal(`-/opt/sensor-agent/${SNAPSHOT_ENV_FILE}`);
    expect(only(unit, 'Unit', 'ConditionFileIsExecutable')).to.equal('/opt/sensor-agent/node/bin/node');
    // The V8 compile cache lives where the hardened unit can write (ProtectSystem=strict).
    expect(only(unit, 'Service', 'CacheDirectory')).to.equal('sensor-agent');
    expect(unit.get('Service')?.get('Environment') ?? []).to.include('NODE_COMPILE_CACHE=/var/cache/sensor-agent');
    // ...and so is the environment they run it with.
    for (const [k, v] of Object.entries(AGENT_NODE_ENV)) expect(unit.get('Service')?.get('Environment') ?? []).to.include(`${k}=${v}`);
    expect(only(unit, 'Service', 'Type')).to.equal('notify');
    expect(only(unit, 'Service', 'NotifyAccess')).to.equal('all');
    expect(only(unit, 'Service', 'WatchdogSec')).to.match(/^\d+s$/);
    expect(only(unit, 'Service', 'Restart')).to.equal('on-failure');
    expect(only(unit, 'Service', 'RestartPreventExitStatus').split(/\s+/)).to.include('10');
    expect(only(unit, 'Service', 'RestartPreventExitStatus').split(/\s+/)).to.include('2');
    // Never given up on (issue 9): no start limit; READY=1 does not wait for the broker, so TimeoutStartSec only bounds the local start-up.
    expect(only(unit, 'Unit', 'StartLimitIntervalSec')).to.equal('0');
    expect(only(unit, 'Service', 'TimeoutStartSec')).to.match(/^\d+s$/);
    expect(only(unit, 'Service', 'User')).to.equal('sensor-agent');
    expect(only(unit, 'Service', 'StateDirectory')).to.equal('sensor-agent');
    expect(only(unit, 'Service', 'StateDirectoryMode')).to.equal('0700');
    expect(only(unit, 'Service', 'ConfigurationDirectory')).to.equal('sensor-agent');
    expect(only(unit, 'Service', 'UMask')).to.equal('0077');
    expect(unit.get('Service')?.has('MemoryDenyWriteExecute'), 'Node cannot run with MemoryDenyWriteExecute=yes').to.equal(false);
    expect(only(unit, 'Install', 'WantedBy')).to.equal('multi-user.target');
  });

  it('upgrades: the agent unit runs the guard before each start; the path unit starts the root installer on a staged release', async () => {
    const agent = parseUnit(await readFile(join(SYSTEMD_DIR, 'sensor-agent.service'), 'utf8'));
    expect(only(agent, 'Service', 'ExecStartPre')).to.equal('-+/usr/lib/sensor-agent/upgrade-guard pre-start');
    const path = parseUnit(await readFile(join(SYSTEMD_DIR, 'sensor-agent-upgrade.path'), 'utf8'));
    expect(only(path, 'Path', 'PathExists')).to.equal('/var/lib/sensor-agent/upgrade/staged.json');
    expect(only(path, 'Path', 'Unit')).to.equal('sensor-agent-upgrade.service');
    expect(only(path, 'Install', 'WantedBy')).to.equal('paths.target');
    const svc = parseUnit(await readFile(join(SYSTEMD_DIR, 'sensor-agent-upgrade.service'), 'utf8'));
    expect(only(svc, 'Service', 'ExecStart')).to.equal('/usr/lib/sensor-agent/upgrade-guard install');
    expect(svc.get('Service')?.has('User'), 'root').to.equal(false);
    expect(only(svc, 'Service', 'StateDirectory')).to.equal('sensor-agent-upgrade');
    expect(only(svc, 'Service', 'ReadWritePaths').split(/\s+/)).to.deep.equal(['/opt', '/var/lib/sensor-agent', '/var/lib/sensor-agent-upgrade']);
    expect(only(svc, 'Service', 'ProtectSystem')).to.equal('strict');
    // Started at boot only while there is something to finish or install.
    expect(svc.get('Unit')?.get('ConditionPathExists')).to.include.members([
      '|/var/lib/sensor-agent-upgrade/trial',
      '|/var/lib/sensor-agent/upgrade/staged.json',
    ]);
    expect(only(svc, 'Install', 'WantedBy')).to.equal('multi-user.target');
  });

  it('provision-server.service runs the server as its own user with its data in the StateDirectory', async () => {
    const unit = parseUnit(await readFile(join(SYSTEMD_DIR, 'provision-server.service'), 'utf8'));
    expect(only(unit, 'Service', 'ExecStart')).to.equal('/usr/bin/node /opt/provision-server/dist/server/cli.js serve --data /var/lib/provision-server');
    expect(only(unit, 'Service', 'User')).to.equal('provision-server');
    expect(only(unit, 'Service', 'StateDirectory')).to.equal('provision-server');
    expect(only(unit, 'Service', 'StateDirectoryMode')).to.equal('0700');
    expect(only(unit, 'Service', 'UMask')).to.equal('0077');
  });

  it('the example drop-ins (GPIO character device, encrypted credentials) verify cleanly', async () => {
    const dropDir = join(root, 'etc/systemd/system/sensor-agent.service.d');
    await mkdir(dropDir, { recursive: true });
    try {
      for (const name of ['gpio-chardev.conf', 'credentials.conf']) {
        await copyFile(join(SYSTEMD_DIR, 'examples', name), join(dropDir, name));
        const r = await verify('sensor-agent.service');
        expect(r.stderr, name).to.equal('');
        expect(r.code, name).to.equal(0);
      }
      console.log(`      exposure of sensor-agent.service with both drop-ins: ${(await exposure('sensor-agent.service')).toFixed(1)}`);
    } finally {
      await rm(dropDir, { recursive: true, force: true });
    }
  });

  it('sysusers.d: systemd-sysusers creates sensor-agent (member of gpio) and provision-server', async function () {
    const { 'systemd-sysusers': sysusers = '' } = requireTools(this, 'REQUIRE_SYSTEMD_ANALYZE', ['systemd-sysusers']);
    const target = await mkdtemp(join(tmpdir(), 'sysusers-root-'));
    try {
      await mkdir(join(target, 'etc'));
      await writeFile(join(target, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/bash\n');
      await writeFile(join(target, 'etc/group'), 'root:x:0:\ngpio:x:997:pi\n');
      const r = await runTool(sysusers, [
        `--root=${target}`,
        join(SYSTEMD_DIR, 'sysusers.d/sensor-agent.conf'),
        join(SYSTEMD_DIR, 'sysusers.d/provision-server.conf'),
      ]);
      expect(r.code, r.stderr).to.equal(0);
      const passwd = await readFile(join(target, 'etc/passwd'), 'utf8');
      const group = await readFile(join(target, 'etc/group'), 'utf8');
      const agent = /^sensor-agent:x:(\d+):(\d+):[^:]*:\/var\/lib\/sensor-agent:\/usr\/sbin\/nologin$/m.exec(passwd);
      expect(agent, passwd).to.not.equal(null);
      expect(Number(agent?.[1])).to.be.within(1, 999);
      expect(passwd).to.match(/^provision-server:x:\d+:\d+:/m);
      expect(group).to.match(/^gpio:x:997:pi,sensor-agent$/m);
    } finally {
      await rm(target, { recursive: true, force: true });
    }
  });
});
