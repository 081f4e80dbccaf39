/**
 * The agent's configuration file (docs/CONTRACTS.md): loaded, validated in
 * full (every problem reported at once, each with its key path; unknown keys
 * are errors) and returned with every path made absolute against the
 * config file's directory.
 */
import { access, constants, readFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import {
  assertValidPrefix,
  CodedError,
  DEFAULT_MAX_SKEW_SECONDS,
  MAX_REPORT_INTERVAL_SECONDS,
  MIN_REPORT_INTERVAL_SECONDS,
  DEFAULT_TOPIC_PREFIX,
  GPIO_PIN_MAX,
  ID_PATTERN,
} from '../protocol/index.js';
import type { GpioConfig } from './gpio/index.js';
import { isLogLevel, type LogLevel } from '../lib/log.js';

export const DEFAULT_CONFIG_PATH = '/etc/sensor-agent/config.json';
export const DEFAULT_SERVER_ID = 'provision-server';
export const DEFAULT_KEYSTORE = '/var/lib/sensor-agent/keys';
export const DEFAULT_STATE_DIR = '/var/lib/sensor-agent/state';
export const DEFAULT_ENROLLMENT_TOKEN = '/var/lib/sensor-agent/enroll.token';
export const DEFAULT_HOOK_TIMEOUT_S = 30;
/** How often a connected agent sends an `interval` report (docs/PROTOCOL.md, Reports). */
export const DEFAULT_REPORT_INTERVAL_S = 300;
/** The root installer of agent upgrades (installed by flash; provisioning/upgrade-guard). */
export const DEFAULT_UPGRADE_INSTALLER = '/usr/lib/sensor-agent/upgrade-guard';
/** Where release trees are unpacked (`/opt/sensor-agent-releases/VERSION`): its free space is checked. */
export const DEFAULT_UPGRADE_INSTALL_ROOT = '/opt';
/** The pinned release keys' file name, next to `trust` by default. */
export const RELEASE_KEYS_FILE = 'release.jwks';
const MAX_CONFIG_BYTES = 256 * 1024;

export type ClockPolicyName = 'auto' | 'trusted' | 'untrusted';
export type MqttProtocolVersion = 4 | 5;

export interface BrokerConfig {
  url: string;
  /** Absolute path of the pinned CA (PEM), or null for the system's CAs. */
  ca: string | null;
  cert: string | null;
  key: string | null;
  protocol_version: MqttProtocolVersion;
  allow_insecure: boolean;
}

export interface AgentConfig {
  /** Absolute path of the file this came from. */
  path: string;
  device_id: string;
  server_id: string;
  topic_prefix: string;
  broker: BrokerConfig;
  keystore: string;
  trust: string;
  state_dir: string;
  enrollment_token: string;
  gpio: GpioConfig;
  hooks_dir: string | null;
  hook_timeout_s: number;
  /** Seconds between `interval` reports while connected. */
  report_interval_s: number;
  clock: { policy: ClockPolicyName; max_skew_s: number };
  log_level: LogLevel;
  /** The pinned release keys (public JWK set): absent file = upgrades refused (E_UPGRADE_UNSUPPORTED). */
  release_keys: string;
  upgrade: UpgradeConfig;
}

export interface UpgradeConfig {
  /** The root installer; absent = upgrades refused (E_UPGRADE_UNSUPPORTED). */
  installer_path: string;
  /** The agent's download and hand-over directory (default: `upgrade/` beside `state_dir`, /var/lib/sensor-agent/upgrade on a board). */
  dir: string;
  /** Where releases unpack (its file system's free space is checked). */
  install_root: string;
}

/** Invalid configuration: `problems` lists every one (`key.path: why`). Exit status 2 (agent/commands/exit-statuses.ts). */
export class ConfigError extends CodedError<'E_CONFIG'> {
  override readonly name = 'ConfigError';
  constructor(
    readonly file: string,
    readonly problems: readonly string[],
  ) {
    super('E_CONFIG', `${file}: ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n  ${problems.join('\n  ')}`, { details: { file, problems } });
  }
}

/** Reads, validates and resolves the config file; also checks that the files it names are readable. */
export async function loadConfig(path: string = DEFAULT_CONFIG_PATH): Promise<AgentConfig> {
  const file = resolve(path);
  let text: string;
  try {
    const data = await readFile(file);
    if (data.length > MAX_CONFIG_BYTES) throw new ConfigError(file, [`the file exceeds ${MAX_CONFIG_BYTES} bytes`]);
    text = data.toString('utf8');
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT' ? 'does not exist (give another with --config FILE)' : code === 'EACCES' ? 'is not readable by this user' : (err as Error).message;
    throw new ConfigError(file, [`the config file ${why}`]);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(file, [`not valid JSON: ${(err as Error).message}`]);
  }
  const { config, problems } = checkConfig(value, file);
  if (config) {
    const files: [string, string | null][] = [
      ['broker.ca', config.broker.ca],
      ['broker.cert', config.broker.cert],
      ['broker.key', config.broker.key],
      ['trust', config.trust],
    ];
    for (const [key, p] of files) {
      if (p === null) continue;
      try {
        await access(p, constants.R_OK);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        problems.push(`${key}: ${p} ${code === 'ENOENT' ? 'does not exist' : `is not readable (${code ?? 'error'})`}`);
      }
    }
  }
  if (problems.length > 0 || !config) throw new ConfigError(file, problems);
  return config;
}

/** Validates a parsed config object; `file` is where it came from (relative paths resolve against its directory). */
export function validateConfig(value: unknown, file: string): AgentConfig {
  const { config, problems } = checkConfig(value, resolve(file));
  if (problems.length > 0 || !config) throw new ConfigError(resolve(file), problems);
  return config;
}

function checkConfig(value: unknown, file: string): { config: AgentConfig | undefined; problems: string[] } {
  const problems: string[] = [];
  const base = dirname(file);
  const root = new Section(value, '', problems);
  if (!root.ok) return { config: undefined, problems };
  root.allowOnly([
    'device_id',
    'server_id',
    'topic_prefix',
    'broker',
    'keystore',
    'trust',
    'state_dir',
    'enrollment_token',
    'gpio',
    'hooks_dir',
    'hook_timeout_s',
    'report_interval_s',
    'clock',
    'log_level',
    'release_keys',
    'upgrade',
  ]);
  const path = (key: string, fallback: string | null, required = false): string | null => {
    const v = root.string(key, { required });
    if (v === undefined) return fallback;
    return isAbsolute(v) ? v : resolve(base, v);
  };

  const deviceId = root.string('device_id', {
    required: true,
    pattern: ID_PATTERN,
    patternWhy: 'must be 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit',
  });
  const serverId = root.string('server_id', { pattern: ID_PATTERN, patternWhy: 'must be 1-64 letters, digits, ".", "_" or "-"' }) ?? DEFAULT_SERVER_ID;
  const prefix = root.string('topic_prefix') ?? DEFAULT_TOPIC_PREFIX;
  // The protocol's own rule (the topics are built with it at start): levels of A-Z a-z 0-9 . _ -
  if (prefix.length > 128 || !isValidPrefix(prefix))
    problems.push(
      `topic_prefix: "${prefix.slice(0, 40)}" must be 1-128 characters: levels of A-Z a-z 0-9 . _ - separated by "/" (no spaces, wildcards, leading $ or /, or trailing /)`,
    );

  const b = root.section('broker', true);
  let broker: BrokerConfig | undefined;
  if (b?.ok) {
    b.allowOnly(['url', 'ca', 'cert', 'key', 'protocol_version', 'allow_insecure']);
    const url = b.string('url', { required: true });
    const allowInsecure = b.boolean('allow_insecure') ?? false;
    if (url !== undefined) checkBrokerUrl(url, allowInsecure, problems);
    const rel = (k: string): string | null => {
      const v = b.string(k);
      return v === undefined ? null : isAbsolute(v) ? v : resolve(base, v);
    };
    const ca = rel('ca');
    const cert = rel('cert');
    const key = rel('key');
    if ((cert === null) !== (key === null)) problems.push(`broker.${cert === null ? 'cert' : 'key'}: broker.cert and broker.key go together`);
    const version = b.integer('protocol_version', 4, 5) ?? 4;
    if (url !== undefined) broker = { url, ca, cert, key, protocol_version: version as MqttProtocolVersion, allow_insecure: allowInsecure };
  }

  const keystore = path('keystore', DEFAULT_KEYSTORE) ?? DEFAULT_KEYSTORE;
  const trust = path('trust', null, true);
  const stateDir = path('state_dir', DEFAULT_STATE_DIR) ?? DEFAULT_STATE_DIR;
  const token = path('enrollment_token', DEFAULT_ENROLLMENT_TOKEN) ?? DEFAULT_ENROLLMENT_TOKEN;
  const hooksDir = path('hooks_dir', null);
  const hookTimeout = root.integer('hook_timeout_s', 1, 3600) ?? DEFAULT_HOOK_TIMEOUT_S;
  const reportInterval = root.integer('report_interval_s', MIN_REPORT_INTERVAL_SECONDS, MAX_REPORT_INTERVAL_SECONDS) ?? DEFAULT_REPORT_INTERVAL_S;

  const gpio: GpioConfig = {};
  const g = root.section('gpio', false);
  if (g?.ok) {
    g.allowOnly(['backend', 'sysfs_root', 'status_led', 'sensor_enable', 'reset_button', 'reset_hold_s']);
    const backend = g.string('backend', { oneOf: ['auto', 'onoff', 'fake', 'none'] });
    if (backend !== undefined) gpio.backend = backend as GpioConfig['backend'];
    const sysfs = g.string('sysfs_root');
    if (sysfs !== undefined) gpio.sysfs_root = isAbsolute(sysfs) ? sysfs : resolve(base, sysfs);
    const pins: number[] = [];
    for (const role of ['status_led', 'sensor_enable', 'reset_button'] as const) {
      const pin = g.pin(role);
      if (pin !== undefined) gpio[role] = pin;
      if (typeof pin === 'number') {
        if (pins.includes(pin)) problems.push(`gpio.${role}: pin ${pin} is already used by another role`);
        pins.push(pin);
      }
    }
    const hold = g.number('reset_hold_s', 1, 600);
    if (hold !== undefined) gpio.reset_hold_s = hold;
  }

  let clock: AgentConfig['clock'] = { policy: 'auto', max_skew_s: DEFAULT_MAX_SKEW_SECONDS };
  const c = root.section('clock', false);
  if (c?.ok) {
    c.allowOnly(['policy', 'max_skew_s']);
    const policy = (c.string('policy', { oneOf: ['auto', 'trusted', 'untrusted'] }) ?? 'auto') as ClockPolicyName;
    clock = { policy, max_skew_s: c.integer('max_skew_s', 0, 86400) ?? DEFAULT_MAX_SKEW_SECONDS };
  }
  const level = root.string('log_level', { oneOf: ['debug', 'info', 'warn', 'error'] }) ?? 'info';
  const releaseKeys = path('release_keys', trust === null ? null : join(dirname(trust), RELEASE_KEYS_FILE));
  const upgrade: UpgradeConfig = {
    installer_path: DEFAULT_UPGRADE_INSTALLER,
    dir: join(dirname(stateDir), 'upgrade'),
    install_root: DEFAULT_UPGRADE_INSTALL_ROOT,
  };
  const u = root.section('upgrade', false);
  if (u?.ok) {
    u.allowOnly(['installer_path', 'dir', 'install_root']);
    const abs = (k: keyof UpgradeConfig): void => {
      const v = u.string(k);
      if (v !== undefined) upgrade[k] = isAbsolute(v) ? v : resolve(base, v);
    };
    abs('installer_path');
    abs('dir');
    abs('install_root');
  }

  if (problems.length > 0 || deviceId === undefined || broker === undefined || trust === null || releaseKeys === null || !isLogLevel(level)) {
    return { config: undefined, problems };
  }
  return {
    config: {
      path: file,
      device_id: deviceId,
      server_id: serverId,
      topic_prefix: prefix,
      broker,
      keystore,
      trust,
      state_dir: stateDir,
      enrollment_token: token,
      gpio,
      hooks_dir: hooksDir,
      hook_timeout_s: hookTimeout,
      report_interval_s: reportInterval,
      clock,
      log_level: level,
      release_keys: releaseKeys,
      upgrade,
    },
    problems,
  };
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);

/** True when `host` (as URL.hostname gives it) is the loopback interface. */
export function isLoopbackHost(host: string): boolean {
  return LOOPBACK.has(host) || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** Checks a broker URL against the TLS policy; pushes problems for `broker.url`. */
export function checkBrokerUrl(url: string, allowInsecure: boolean, problems: string[], key = 'broker.url'): void {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    problems.push(`${key}: "${url}" is not a URL (expected mqtts://host:port)`);
    return;
  }
  if (u.protocol !== 'mqtts:' && u.protocol !== 'mqtt:') {
    problems.push(`${key}: scheme ${u.protocol} is not supported (use mqtts://, or mqtt:// on loopback)`);
    return;
  }
  if (u.hostname === '') problems.push(`${key}: has no host`);
  if (u.username || u.password) problems.push(`${key}: must not carry credentials`);
  if ((u.pathname !== '' && u.pathname !== '/') || u.search || u.hash) problems.push(`${key}: must be scheme://host[:port] only`);
  if (u.protocol === 'mqtt:' && !isLoopbackHost(u.hostname) && !allowInsecure) {
    problems.push(
      `${key}: plain mqtt:// to ${u.hostname} would send everything unencrypted on the network; use mqtts://, or set broker.allow_insecure: true to force it`,
    );
  }
}

/** One object of the config, collecting problems under its key path. */
class Section {
  readonly ok: boolean;
  readonly #v: Record<string, unknown>;

  constructor(
    value: unknown,
    readonly prefix: string,
    readonly problems: string[],
  ) {
    this.ok = typeof value === 'object' && value !== null && !Array.isArray(value);
    if (!this.ok) problems.push(`${prefix || '(top level)'}: must be a JSON object`);
    this.#v = this.ok ? (value as Record<string, unknown>) : {};
  }

  key(k: string): string {
    return this.prefix ? `${this.prefix}.${k}` : k;
  }

  allowOnly(keys: readonly string[]): void {
    for (const k of Object.keys(this.#v)) if (!keys.includes(k)) this.problems.push(`${this.key(k)}: unknown key (known: ${keys.join(', ')})`);
  }

  section(k: string, required: boolean): Section | undefined {
    const v = this.#v[k];
    if (v === undefined) {
      if (required) this.problems.push(`${this.key(k)}: is required`);
      return undefined;
    }
    return new Section(v, this.key(k), this.problems);
  }

  string(k: string, o: { required?: boolean; pattern?: RegExp; patternWhy?: string; oneOf?: readonly string[] } = {}): string | undefined {
    const v = this.#v[k];
    if (v === undefined) {
      if (o.required) this.problems.push(`${this.key(k)}: is required`);
      return undefined;
    }
    if (typeof v !== 'string' || v === '') {
      this.problems.push(`${this.key(k)}: must be a non-empty string`);
      return undefined;
    }
    if (o.oneOf && !o.oneOf.includes(v)) {
      this.problems.push(`${this.key(k)}: must be one of ${o.oneOf.join(', ')} (got "${v}")`);
      return undefined;
    }
    if (o.pattern && !o.pattern.test(v)) {
      this.problems.push(`${this.key(k)}: ${o.patternWhy ?? 'has an invalid form'} (got "${v}")`);
      return undefined;
    }
    return v;
  }

  boolean(k: string): boolean | undefined {
    const v = this.#v[k];
    if (v === undefined) return undefined;
    if (typeof v !== 'boolean') {
      this.problems.push(`${this.key(k)}: must be true or false`);
      return undefined;
    }
    return v;
  }

  number(k: string, min: number, max: number): number | undefined {
    const v = this.#v[k];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
      this.problems.push(`${this.key(k)}: must be a number from ${min} to ${max}`);
      return undefined;
    }
    return v;
  }

  integer(k: string, min: number, max: number): number | undefined {
    const v = this.#v[k];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      this.problems.push(`${this.key(k)}: must be an integer from ${min} to ${max}`);
      return undefined;
    }
    return v;
  }

  pin(k: string): number | null | undefined {
    if (this.#v[k] === null) return null;
    return this.integer(k, 0, GPIO_PIN_MAX);
  }
}

function isValidPrefix(prefix: string): boolean {
  try {
    assertValidPrefix(prefix);
    return true;
  } catch {
    return false;
  }
}
