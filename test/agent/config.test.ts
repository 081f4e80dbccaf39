/**
 * agent/config.ts on real files: a full valid config resolves every relative
 * path against the config file's directory; invalid ones are refused with
 * every problem at once, each under its key path; plain mqtt:// off loopback
 * needs broker.allow_insecure; unreadable or malformed files name the file.
 */
import { expect } from 'chai';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, DEFAULT_CONFIG_PATH, loadConfig } from '../../agent/config.js';
import { agentExitStatus } from '../../agent/commands/exit-statuses.js';

async function refused(p: Promise<unknown>): Promise<ConfigError> {
  try {
    await p;
  } catch (err) {
    expect(err, String(err)).to.be.instanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('agent/config: loadConfig on real files', () => {
  let root: string;
  let etc: string;

  /** A config in `etc/` (its own directory: relative paths resolve there) with the files it names. */
  const write = async (value: unknown, name = 'config.json'): Promise<string> => {
    const file = join(etc, name);
    await writeFile(file, typeof value === 'string' ? value : JSON.stringify(value, null, 2));
    return file;
  };
  const minimal = (extra: Record<string, unknown> = {}, broker: Record<string, unknown> = {}): Record<string, unknown> => ({
    device_id: 'sensor-0001',
    broker: { url: 'mqtts://broker.example.net:8883', ...broker },
    trust: 'trust.jwks',
    ...extra,
  });

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'agent-config-'));
    etc = join(root, 'etc');
    await mkdir(etc);
    for (const f of ['trust.jwks', 'ca.pem', 'client.crt', 'client.key']) await writeFile(join(etc, f), 'x');
  });

  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('loads a complete config, resolving relative paths against the config file directory (not the cwd)', async () => {
    await mkdir(join(etc, 'sub'));
    await writeFile(join(etc, 'sub', 'ca.pem'), 'x');
    const file = await write({
      device_id: 'sensor-0001',
      server_id: 'provision-server',
      topic_prefix: 'fleet/a',
      broker: { url: 'mqtts://broker.example.net:8883', ca: 'sub/ca.pem', cert: 'client.crt', key: './client.key', protocol_version: 5, allow_insecure: false },
      keystore: 'keys',
      trust: 'trust.jwks',
      state_dir: '../var/state',
      enrollment_token: '/var/lib/sensor-agent/enroll.token',
      gpio: { backend: 'fake', sysfs_root: 'sys/gpio', status_led: 17, sensor_enable: 27, reset_button: 22, reset_hold_s: 5 },
      hooks_dir: 'hooks',
      hook_timeout_s: 12,
      clock: { policy: 'untrusted', max_skew_s: 60 },
      log_level: 'warn',
    });
    const cwd = process.cwd();
    process.chdir(root); // relative to the file's directory, whatever the working directory
    let c;
    try {
      c = await loadConfig(join('etc', 'config.json'));
    } finally {
      process.chdir(cwd);
    }
    expect(c.path).to.equal(file);
    expect(c.device_id).to.equal('sensor-0001');
    expect(c.server_id).to.equal('provision-server');
    expect(c.topic_prefix).to.equal('fleet/a');
    expect(c.broker).to.deep.equal({
      url: 'mqtts://broker.example.net:8883',
      ca: join(etc, 'sub', 'ca.pem'),
      cert: join(etc, 'client.crt'),
      key: join(etc, 'client.key'),
      protocol_version: 5,
      allow_insecure: false,
    });
    expect(c.keystore).to.equal(join(etc, 'keys'));
    expect(c.trust).to.equal(join(etc, 'trust.jwks'));
    expect(c.state_dir).to.equal(join(root, 'var', 'state'));
    expect(c.enrollment_token).to.equal('/var/lib/sensor-agent/enroll.token');
    expect(c.hooks_dir).to.equal(join(etc, 'hooks'));
    expect(c.gpio).to.deep.equal({
      backend: 'fake',
      sysfs_root: join(etc, 'sys', 'gpio'),
      status_led: 17,
      sensor_enable: 27,
      reset_button: 22,
      reset_hold_s: 5,
    });
    expect(c.hook_timeout_s).to.equal(12);
    expect(c.clock).to.deep.equal({ policy: 'untrusted', max_skew_s: 60 });
    expect(c.log_level).to.equal('warn');
  });

  it('fills the documented defaults for a minimal config', async () => {
    const c = await loadConfig(await write(minimal()));
    expect(c.server_id).to.equal('provision-server');
    expect(c.topic_prefix).to.equal('provision');
    expect(c.broker).to.deep.equal({ url: 'mqtts://broker.example.net:8883', ca: null, cert: null, key: null, protocol_version: 4, allow_insecure: false });
    expect(c.keystore).to.equal('/var/lib/sensor-agent/keys');
    expect(c.state_dir).to.equal('/var/lib/sensor-agent/state');
    expect(c.enrollment_token).to.equal('/var/lib/sensor-agent/enroll.token');
    expect(c.hooks_dir).to.equal(null);
    expect(c.report_interval_s).to.equal(300);
    expect(c.clock.policy).to.equal('auto');
    expect(c.log_level).to.equal('info');
    expect(DEFAULT_CONFIG_PATH).to.equal('/etc/sensor-agent/config.json');
  });

  it('reports every problem of one file at once, each under its key path', async () => {
    const file = await write({
      device_id: '-bad id',
      topic_prefix: 'a/#',
      broker: { url: 'mqtts://broker.example.net:8883', protocol_version: 3, cert: 'client.crt' },
      trust: 'missing.jwks',
      hook_timeout_s: 'thirty',
      report_interval_s: 5,
      gpio: { backend: 'magic', status_led: 17, sensor_enable: 17 },
      clock: { policy: 'sometimes' },
      log_level: 'verbose',
    });
    const err = await refused(loadConfig(file));
    expect(err.code).to.equal('E_CONFIG');
    expect(agentExitStatus(err)).to.equal(2);
    expect(err.file).to.equal(file);
    const byKey = (key: string): string => {
      const found = err.problems.filter((p) => p.startsWith(`${key}: `));
      expect(found, `one problem for ${key} in:\n${err.problems.join('\n')}`).to.have.length(1);
      return found[0]!;
    };
    expect(byKey('device_id')).to.include('"-bad id"');
    expect(byKey('topic_prefix')).to.include('wildcards');
    expect(byKey('broker.protocol_version')).to.include('from 4 to 5');
    expect(byKey('broker.key')).to.include('go together');
    expect(byKey('hook_timeout_s')).to.include('integer');
    expect(byKey('report_interval_s')).to.include('integer from 10 to 86400');
    expect(byKey('gpio.backend')).to.include('"magic"');
    expect(byKey('gpio.sensor_enable')).to.include('pin 17 is already used');
    expect(byKey('clock.policy')).to.include('"sometimes"');
    expect(byKey('log_level')).to.include('"verbose"');
    // Checks that need the file system still run when the shape is fine.
    const err2 = await refused(loadConfig(await write(minimal({ trust: 'missing.jwks' }, { ca: 'nope/ca.pem' }), 'two.json')));
    expect(err2.problems).to.deep.equal([`broker.ca: ${join(etc, 'nope', 'ca.pem')} does not exist`, `trust: ${join(etc, 'missing.jwks')} does not exist`]);
    // One error, whose message names the file and lists them all.
    expect(err.message.split('\n')[0]).to.equal(`${file}: ${err.problems.length} problems:`);
    for (const p of err.problems) expect(err.message).to.include(p);
    expect(err.problems.length).to.be.at.least(9);
  });

  it('refuses unknown keys at the top level and in nested sections, naming their path', async () => {
    const file = await write(minimal({ devce_id: 'typo', gpio: { backend: 'none', led: 3 }, clock: { policy: 'auto', skew: 1 } }, { tls: true }));
    const err = await refused(loadConfig(file));
    const keys = err.problems.map((p) => p.slice(0, p.indexOf(':')));
    expect(keys).to.have.members(['devce_id', 'broker.tls', 'gpio.led', 'clock.skew']);
    for (const p of err.problems) expect(p).to.include('unknown key (known: ');
    expect(err.problems.find((p) => p.startsWith('broker.tls'))).to.include('allow_insecure');
  });

  it('reports missing required keys and a config that is not an object', async () => {
    const err = await refused(loadConfig(await write({})));
    expect(err.problems).to.have.members(['device_id: is required', 'broker: is required', 'trust: is required']);
    const err2 = await refused(loadConfig(await write(minimal({ broker: 'mqtts://x:8883' }), 'b.json')));
    expect(err2.problems).to.deep.equal(['broker: must be a JSON object']);
    const err3 = await refused(loadConfig(await write('[1, 2]', 'arr.json')));
    expect(err3.problems).to.deep.equal(['(top level): must be a JSON object']);
  });

  describe('plain mqtt://', () => {
    for (const host of ['broker.example.net', '192.168.1.10', '10.0.0.1']) {
      it(`is refused to ${host} unless broker.allow_insecure is true`, async () => {
        const err = await refused(loadConfig(await write(minimal({}, { url: `mqtt://${host}:1883` }))));
        expect(err.problems).to.have.length(1);
        expect(err.problems[0]).to.match(new RegExp(`^broker\\.url: plain mqtt:// to ${host.replaceAll('.', '\\.')} would send everything unencrypted`));
        expect(err.problems[0]).to.include('broker.allow_insecure: true');
        // allow_insecure must be a real boolean, not a truthy string
        const err2 = await refused(loadConfig(await write(minimal({}, { url: `mqtt://${host}:1883`, allow_insecure: 'yes' }), 'str.json')));
        expect(err2.problems).to.include('broker.allow_insecure: must be true or false');
        const forced = await loadConfig(await write(minimal({}, { url: `mqtt://${host}:1883`, allow_insecure: true }), 'forced.json'));
        expect(forced.broker.url).to.equal(`mqtt://${host}:1883`);
        expect(forced.broker.allow_insecure).to.equal(true);
      });
    }

    for (const url of ['mqtt://127.0.0.1:1883', 'mqtt://localhost:1883', 'mqtt://[::1]:1883', 'mqtt://127.1.2.3']) {
      it(`is allowed to loopback (${url}) without forcing`, async () => {
        const c = await loadConfig(await write(minimal({}, { url })));
        expect(c.broker.url).to.equal(url);
        expect(c.broker.allow_insecure).to.equal(false);
      });
    }

    it('does not mistake a host that merely starts with 127 or localhost for loopback', async () => {
      for (const url of ['mqtt://127.0.0.1.example.net:1883', 'mqtt://localhost.example.net:1883']) {
        const err = await refused(loadConfig(await write(minimal({}, { url }))));
        expect(err.problems[0], url).to.match(/^broker\.url: plain mqtt:\/\//);
      }
    });

    it('refuses other schemes, credentials and paths in the URL', async () => {
      const cases: [string, RegExp][] = [
        ['http://broker.example.net', /^broker\.url: scheme http: is not supported/],
        ['mqtts://user:pw@broker.example.net:8883', /^broker\.url: must not carry credentials/],
        ['mqtts://broker.example.net:8883/path', /^broker\.url: must be scheme:\/\/host\[:port\] only/],
        ['broker.example.net:8883', /^broker\.url: /],
      ];
      for (const [url, re] of cases) {
        const err = await refused(loadConfig(await write(minimal({}, { url }))));
        expect(err.problems.join('\n'), url).to.match(re);
      }
    });
  });

  it('names the file when it does not exist, pointing at --config', async () => {
    const file = join(etc, 'absent.json');
    const err = await refused(loadConfig(file));
    expect(err.file).to.equal(file);
    expect(err.problems).to.deep.equal(['the config file does not exist (give another with --config FILE)']);
    expect(err.message).to.equal(`${file}: 1 problem:\n  the config file does not exist (give another with --config FILE)`);
  });

  it('names the file and the parse error when it is not valid JSON', async () => {
    const file = await write('{ "device_id": "sensor-0001", }');
    const err = await refused(loadConfig(file));
    expect(err.file).to.equal(file);
    expect(err.problems).to.have.length(1);
    expect(err.problems[0]).to.match(/^not valid JSON: /);
    expect(err.message.startsWith(`${file}: 1 problem:`)).to.equal(true);
  });

  it('refuses a directory given as the config file and an oversized file', async () => {
    const err = await refused(loadConfig(etc));
    expect(err.file).to.equal(etc);
    expect(err.problems[0]).to.match(/^the config file /);
    const big = await write(`{"device_id":"sensor-0001","pad":"${'x'.repeat(300 * 1024)}"}`, 'big.json');
    const err2 = await refused(loadConfig(big));
    expect(err2.problems).to.deep.equal(['the file exceeds 262144 bytes']);
  });
});
