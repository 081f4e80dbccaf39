/**
 * The on-device self-test, as data: used by `sensor-agent selftest` (a
 * technician after flashing) and by the `selftest` action (remote). Each
 * check says pass / warn / fail / skip, why, and how to fix it; the test
 * passes when no required check fails.
 */
import { randomBytes } from 'node:crypto';
import { access, open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { KeyRing, openAck, sealAck, toPublicJwk } from '../protocol/index.js';
import { brokerFailureFix, probeTlsIdentity } from './net/broker-probe.js';
import { clockStatus } from './system/clock.js';
import { loadConfig, type AgentConfig } from './config.js';
import { writeFileAtomic } from '../lib/durable-file.js';
import { DEFAULT_SYSFS_ROOT, loadOnoff, openOnoff, type OnoffModule } from './gpio/index.js';
import { resolveOnChip } from './gpio/sysfs-resolver.js';
import { KeyStore } from './store/keystore.js';
import type { AgentRuntime } from './runtime.js';
import { readState, StateError, stateLossAdvice, type AgentState } from './store/state.js';
import { loadTrustAnchors, type TrustAnchors } from './store/trust.js';
import { brokerAddress } from '../lib/broker-address.js';

export type CheckStatus = 'pass' | 'warn' | 'fail' | 'skip';

export interface Check {
  id: string;
  title: string;
  required: boolean;
  status: CheckStatus;
  reason: string;
  fix?: string;
}

export interface SelftestReport {
  ok: boolean;
  device_id: string | null;
  at: string;
  checks: Check[];
}

export interface SelftestOptions {
  configPath: string;
  /** Already loaded config (else loaded from configPath). */
  config?: AgentConfig;
  /** Inside a running agent: use its live session, keys and GPIO instead of opening new ones. */
  running?: AgentRuntime;
  /** Broker check timeout, ms (default 8000). */
  brokerTimeoutMs?: number;
  /** The onoff module to load instead of the installed one (tests: a copy whose native addon is broken). */
  onoffModule?: string;
}

export const MIN_NODE = [20, 19] as const;

export async function runSelftest(options: SelftestOptions): Promise<SelftestReport> {
  const checks: Check[] = [];
  const add = (c: Check): void => void checks.push(c);
  const finish = (deviceId: string | null): SelftestReport => ({
    ok: checks.every((c) => !c.required || c.status !== 'fail'),
    device_id: deviceId,
    at: new Date().toISOString(),
    checks,
  });

  let config = options.config;
  if (!config) {
    try {
      config = await loadConfig(options.configPath);
      add({ id: 'config', title: 'configuration', required: true, status: 'pass', reason: `${config.path} is valid` });
    } catch (err) {
      add({
        id: 'config',
        title: 'configuration',
        required: true,
        status: 'fail',
        reason: (err as Error).message,
        fix: 'correct the listed keys in the config file',
      });
      add(nodeCheck());
      return finish(null);
    }
  } else {
    add({ id: 'config', title: 'configuration', required: true, status: 'pass', reason: `${config.path} is valid` });
  }
  const rt = options.running;

  // State (read-only here) and the state directory.
  let state: AgentState | undefined;
  let stateMissing = false;
  try {
    state = rt ? rt.store.state : await readState(config.state_dir);
    stateMissing = state === undefined;
  } catch (err) {
    add({
      id: 'state',
      title: 'state file',
      required: true,
      status: 'fail',
      reason: (err as Error).message,
      fix: err instanceof StateError && err.fix !== undefined ? err.fix : stateLossAdvice(join(config.state_dir, 'state.json')),
    });
  }
  add(await stateDirCheck(config.state_dir));

  // Key store.
  let keystore: KeyStore | undefined = rt?.keystore;
  if (!keystore) {
    try {
      keystore = await KeyStore.open(config.keystore, { credentialsDir: process.env.CREDENTIALS_DIRECTORY });
    } catch (err) {
      const fix = (err as { fix?: unknown }).fix;
      add({
        id: 'keystore',
        title: 'key store permissions',
        required: true,
        status: 'fail',
        reason: (err as Error).message,
        ...(typeof fix === 'string' ? { fix } : {}),
      });
    }
  }
  let tokenPresent = false;
  try {
    await access(config.enrollment_token);
    tokenPresent = true;
  } catch {
    // absent
  }
  if (keystore) {
    if (!rt)
      add({
        id: 'keystore',
        title: 'key store permissions',
        required: true,
        status: 'pass',
        reason: `${config.keystore}: directory 0700, key files 0600, owned by this user or root`,
      });
    add(keysCheck(keystore, state, tokenPresent, stateMissing ? join(config.state_dir, 'state.json') : undefined));
  } else {
    add({ id: 'keys', title: 'device keys', required: true, status: 'skip', reason: 'key store not usable' });
  }

  // Trust anchors.
  let trust: TrustAnchors | undefined = rt?.trust;
  if (!trust) {
    try {
      trust = await loadTrustAnchors(config.trust);
    } catch (err) {
      add({
        id: 'trust',
        title: 'trust anchors',
        required: true,
        status: 'fail',
        reason: (err as Error).message,
        fix: `copy the server's trust.jwks (provision-server bundle) to ${config.trust}`,
      });
    }
  }
  if (trust) {
    add({
      id: 'trust',
      title: 'trust anchors',
      required: true,
      status: 'pass',
      reason: `${trust.signing.length} server signing key(s) pinned (${trust.signing.map((k) => k.kid.slice(0, 12)).join(', ')}), encryption key ${trust.encryption.kid.slice(0, 12)}`,
    });
  }

  add(await roundTripCheck(keystore, config.device_id));

  const clock = await clockStatus(config.clock.policy);
  add({
    id: 'clock',
    title: 'clock',
    required: false,
    status: clock.trusted ? 'pass' : 'warn',
    reason: clock.trusted
      ? `trusted (${clock.reason}): command expiry (exp/iat) is enforced`
      : `not trusted (${clock.reason}): exp/iat are not checked, replay protection relies on seq and jti only`,
    ...(clock.trusted
      ? {}
      : {
          fix:
            config.clock.policy === 'untrusted'
              ? 'set clock.policy to "auto" once NTP works'
              : 'enable NTP (systemctl enable --now systemd-timesyncd) and check network access to the time servers',
        }),
  });

  add(rt ? liveBrokerCheck(rt) : await brokerCheck(config, state, options.brokerTimeoutMs ?? 8000));
  add(await gpioCheck(config, rt, options.onoffModule));
  add(nodeCheck());
  return finish(config.device_id);
}

function nodeCheck(): Check {
  const [major = 0, minor = 0] = process.versions.node.split('.').map(Number);
  const ok = major > MIN_NODE[0] || (major === MIN_NODE[0] && minor >= MIN_NODE[1]);
  return {
    id: 'node',
    title: 'Node.js version',
    required: true,
    status: ok ? 'pass' : 'fail',
    reason: `Node.js ${process.versions.node}${ok ? '' : `; ${MIN_NODE.join('.')} or later is needed`}`,
    ...(ok ? {} : { fix: 'install Node.js 20.19 or later (e.g. the nodejs package of Debian trixie or NodeSource)' }),
  };
}

async function stateDirCheck(dir: string): Promise<Check> {
  const probe = join(dir, `.selftest-${randomBytes(4).toString('hex')}`);
  try {
    await writeFileAtomic(probe, 'probe\n', { mode: 0o600 });
    await unlink(probe);
    return { id: 'state_dir', title: 'state directory', required: true, status: 'pass', reason: `${dir} is writable and fsync works` };
  } catch (err) {
    return {
      id: 'state_dir',
      title: 'state directory',
      required: true,
      status: 'fail',
      reason: `${dir}: ${(err as Error).message}`,
      fix: `install -d -m 700 -o "$(id -un)" ${dir}`,
    };
  }
}

/** `missingState`: the path of state.json when it does not exist. */
function keysCheck(ks: KeyStore, state: AgentState | undefined, tokenPresent: boolean, missingState: string | undefined): Check {
  const base = { id: 'keys', title: 'device keys', required: true };
  if (ks.hasKeys() && ks.inUse && missingState !== undefined) {
    if (tokenPresent)
      return {
        ...base,
        status: 'pass',
        reason: `${missingState} is missing for keys already in use: the agent will replace them and enroll again with the token present`,
      };
    return {
      ...base,
      status: 'fail',
      reason: `${missingState} is missing but the keys were already used with it (E_STATE_LOST): the agent will not act on them`,
      fix: stateLossAdvice(missingState),
    };
  }
  if (!ks.hasKeys()) {
    if (tokenPresent && !state?.provisioned)
      return { ...base, status: 'pass', reason: 'no keys yet: they are generated at enrollment (enrollment token present)' };
    return {
      ...base,
      status: 'fail',
      reason: 'no device keys and no enrollment token',
      fix: 'place an enrollment token (provision-server bundle) at the configured enrollment_token path, then start the agent',
    };
  }
  const sig = ks.signingKey;
  const enc = ks.encryptionKey;
  const registered = state?.keys;
  if (registered?.signing && registered.signing !== sig?.kid && state?.pending_rotation === null) {
    return {
      ...base,
      status: 'fail',
      reason: `signing key ${sig?.kid} is not the registered one (${registered.signing})`,
      fix: 'restore the key store from backup, or re-enroll the board',
    };
  }
  if (registered?.encryption && registered.encryption !== enc?.kid && state?.pending_rotation === null) {
    return {
      ...base,
      status: 'fail',
      reason: `encryption key ${enc?.kid} is not the registered one (${registered.encryption})`,
      fix: 'restore the key store from backup, or re-enroll the board',
    };
  }
  const prev = ks.previousEncryptionKey ? `, previous encryption ${ks.previousEncryptionKey.kid.slice(0, 12)}` : '';
  return {
    ...base,
    status: 'pass',
    reason: `signing ${sig?.kid.slice(0, 12)}, encryption ${enc?.kid.slice(0, 12)} (${enc?.kty})${prev}: parse, kids match their keys${registered?.signing ? ' and the registered state' : ''}`,
  };
}

async function roundTripCheck(ks: KeyStore | undefined, deviceId: string): Promise<Check> {
  const base = { id: 'crypto', title: 'seal/open round trip', required: true };
  const sig = ks?.signingKey;
  const enc = ks?.encryptionKey;
  if (!sig || !enc) return { ...base, status: 'skip', reason: 'no keys yet' };
  try {
    const { token } = await sealAck(
      { deviceId, serverId: deviceId, ref: 'selftest', seq: 0, status: 'applied', code: 'OK', detail: 'probe' },
      { signer: sig, recipient: toPublicJwk(enc) },
    );
    const opened = await openAck(token, { serverId: deviceId, deviceId, decryption: await KeyRing.create([enc]), verification: await KeyRing.create([sig]) });
    if (opened.claims.detail !== 'probe') throw new Error('content changed');
    return { ...base, status: 'pass', reason: 'signed with the device key, encrypted to it, decrypted and verified' };
  } catch (err) {
    return { ...base, status: 'fail', reason: (err as Error).message, fix: 're-enroll the board (keys unusable)' };
  }
}

function liveBrokerCheck(rt: AgentRuntime): Check {
  const ready = rt.session.ready;
  return {
    id: 'broker',
    title: 'broker',
    required: true,
    status: ready ? 'pass' : 'fail',
    reason: ready
      ? `connected and subscribed to ${rt.session.broker.url}`
      : `not connected to ${rt.session.broker.url}: ${rt.session.lastError || 'reconnecting'}`,
  };
}

/** Connects with a separate client id (clean session) so a running agent with the same identity is not disconnected. */
async function brokerCheck(config: AgentConfig, state: AgentState | undefined, timeoutMs: number): Promise<Check> {
  const base = { id: 'broker', title: 'broker', required: true };
  const b = config.broker;
  const stored = state?.settings.broker;
  const url = stored?.url ?? b.url;
  let ca: string | Buffer | undefined;
  let cert: Buffer | undefined;
  let key: Buffer | undefined;
  try {
    ca = stored?.ca ?? (b.ca ? await readFile(b.ca) : undefined);
    cert = b.cert ? await readFile(b.cert) : undefined;
    key = b.key ? await readFile(b.key) : undefined;
  } catch (err) {
    return { ...base, status: 'fail', reason: (err as Error).message };
  }
  if (cert && key && url.startsWith('mqtts:')) {
    // The certificate is the device's MQTT identity: stop at TLS (see broker-probe.ts).
    const r = await probeTlsIdentity({ url, ...(ca !== undefined ? { ca } : {}), cert, key, timeoutMs });
    return { ...base, status: r.ok ? 'pass' : 'fail', reason: r.reason, ...(r.fix ? { fix: r.fix } : {}) };
  }
  // No client certificate: a client id of its own, so a running agent keeps its session.
  const clientId = `${config.device_id}.selftest-${randomBytes(3).toString('hex')}`.slice(0, 64);
  return new Promise<Check>((resolve) => {
    const client = mqtt.connect({
      ...brokerAddress(url),
      clientId,
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: timeoutMs,
      protocolVersion: stored?.protocol_version ?? b.protocol_version,
      rejectUnauthorized: true,
      ...(ca ? { ca } : {}),
      ...(cert ? { cert } : {}),
      ...(key ? { key } : {}),
    });
    let done = false;
    const finish = (c: Check): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      client.end(true);
      resolve(c);
    };
    const timer = setTimeout(
      () =>
        finish({
          ...base,
          status: 'fail',
          reason: `no answer from ${url} within ${timeoutMs / 1000} s`,
          fix: 'check the network, the broker address and the firewall',
        }),
      timeoutMs,
    );
    client.on('connect', () =>
      finish({ ...base, status: 'pass', reason: `${url}: ${url.startsWith('mqtts:') ? 'TLS verified against the pinned CA, ' : ''}credentials accepted` }),
    );
    client.on('error', (err) => {
      finish({ ...base, status: 'fail', reason: `${url}: ${err.message}`, fix: brokerFailureFix(err.message) });
    });
  });
}

const GPIO_ADDON_FIX =
  'the GPIO addon (epoll.node) must be built for this board\'s CPU and this Node.js: install an agent tree built for the board (provisioning/build-agent --arch arm64|armv7, see provisioning/README.md); on a board without GPIO set gpio.backend to "none"';

/** ELF e_machine values, named as Node's process.arch names them. */
const ELF_MACHINES: Readonly<Record<number, string>> = { 3: 'ia32', 40: 'arm', 62: 'x64', 183: 'arm64' };

/**
 * The dynamic loader says "cannot open shared object file: No such file or directory" for an
 * addon built for another CPU although the file is there: read its ELF header and say so.
 */
async function addonArchNote(message: string): Promise<string> {
  const file = /(\/\S+\.node): cannot open shared object file/.exec(message)?.[1];
  if (!file) return '';
  try {
    const fh = await open(file, 'r');
    const { buffer, bytesRead } = await fh.read(Buffer.alloc(20), 0, 20, 0).finally(() => fh.close());
    if (bytesRead < 20 || buffer.readUInt32BE(0) !== 0x7f454c46) return '';
    const machine = buffer[5] === 2 ? buffer.readUInt16BE(18) : buffer.readUInt16LE(18);
    return `; ${file} is there but built for ${ELF_MACHINES[machine] ?? `ELF machine ${machine}`}`;
  } catch {
    return '';
  }
}

/** A native loader's message on one line, bounded (the bindings module lists every path it tried). */
function oneLine(message: string, max = 400): string {
  const s = message.replace(/\s*\n\s*/g, ' ').trim();
  return s.length > max ? `${s.slice(0, max - 3)}...` : s;
}

async function gpioCheck(config: AgentConfig, rt: AgentRuntime | undefined, onoffModule: string | undefined): Promise<Check> {
  const base = { id: 'gpio', title: 'GPIO', required: true };
  if (rt) {
    const r = await rt.io.check();
    return {
      ...base,
      status: r.ok ? 'pass' : 'fail',
      reason: r.detail,
      ...(r.ok ? {} : { fix: 'check the pin numbers, that the agent user is in group gpio, or set gpio.backend to "none"' }),
    };
  }
  const g = config.gpio;
  const backend = g.backend ?? 'auto';
  const pins = (['status_led', 'sensor_enable', 'reset_button'] as const).filter((r) => typeof g[r] === 'number');
  if (backend === 'none' || backend === 'fake')
    return { ...base, status: 'pass', reason: `backend ${backend}${pins.length ? `; pins ${pins.join(', ')} not driven` : ''}` };
  // The backend as `run` opens it: onoff and its native addon loaded for real, the header chip found,
  // the export file writable; no pin is exported (a running agent owns them). Needed when pins are
  // wired or onoff is named; otherwise a failure only means `run` goes without GPIO (a warning).
  const needed = backend === 'onoff' || pins.length > 0;
  const failed = (reason: string, fix: string): Check =>
    needed
      ? { ...base, status: 'fail', reason, fix }
      : { ...base, required: false, status: 'warn', reason: `${reason}; no pins configured: the agent runs without GPIO`, fix };
  let onoff: OnoffModule;
  try {
    onoff = await loadOnoff(onoffModule);
  } catch (err) {
    const message = (err as Error).message;
    return failed(
      `${oneLine(message)}${await addonArchNote(message)} (this is Node.js ${process.version}, module ABI ${process.versions.modules}, ${process.arch})`,
      GPIO_ADDON_FIX,
    );
  }
  try {
    const { chip } = await openOnoff(g.sysfs_root ?? DEFAULT_SYSFS_ROOT, { onoff });
    const parts = pins.map((r) => `${r} ${String(g[r])} -> gpio${resolveOnChip(chip, g[r] as number).sysfs}`);
    return {
      ...base,
      status: 'pass',
      reason: `backend onoff loaded (native addon ok); ${chip.dir} "${chip.label}" base ${chip.base}${parts.length ? `: ${parts.join(', ')}` : ', no pins configured'}`,
    };
  } catch (err) {
    return failed(
      (err as Error).message,
      'check /sys/class/gpio and the pin numbers, that the agent user is in group gpio, or set gpio.backend to "none" on a board without GPIO',
    );
  }
}

/** Human form: one line per check with a mark, the reason and how to fix it. */
export function formatReport(report: SelftestReport): string {
  const mark: Record<CheckStatus, string> = { pass: '[ OK ]', warn: '[WARN]', fail: '[FAIL]', skip: '[SKIP]' };
  const lines = report.checks.map(
    (c) =>
      `${mark[c.status]} ${c.title}: ${c.reason}${c.fix && c.status !== 'pass' && !c.reason.includes(c.fix) ? ` -- fix: ${c.fix}` : ''}${!c.required && c.status === 'fail' ? ' (optional)' : ''}`,
  );
  lines.push(
    report.ok
      ? 'self-test passed'
      : `self-test FAILED: ${report.checks
          .filter((c) => c.required && c.status === 'fail')
          .map((c) => c.id)
          .join(', ')}`,
  );
  return `${lines.join('\n')}\n`;
}
