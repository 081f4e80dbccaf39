/**
 * Actions and the schema of each action's `params`. Strict: unknown members
 * are refused, so a typo in a command never passes silently.
 */
import { ProtocolError } from './errors.js';
import { GPIO_PIN_MAX, firstDuplicatePin } from './gpio-pins.js';
import { isRecord } from './guards.js';

export const ACTIONS = ['request', 'update', 'rotate', 'delete', 'selftest', 'upgrade'] as const;
export type Action = (typeof ACTIONS)[number];

export function isAction(value: unknown): value is Action {
  return typeof value === 'string' && (ACTIONS as readonly string[]).includes(value);
}

export interface SensorSettings {
  enabled?: boolean;
  sample_interval_s?: number;
  name?: string;
}

export interface ReportingSettings {
  interval_s?: number;
  topic?: string;
}

export interface GpioSettings {
  status_led?: number | null;
  sensor_enable?: number | null;
  reset_button?: number | null;
}

export interface BrokerSettings {
  url: string;
  /** PEM text of the CA to pin for the new broker. */
  ca?: string;
  protocol_version?: 4 | 5;
}

export interface UpdateParams {
  user_id?: string;
  sensor?: SensorSettings;
  reporting?: ReportingSettings;
  gpio?: GpioSettings;
  broker?: BrokerSettings;
  /** Seconds the agent waits to reconnect to a new broker before it rolls back (5-600, default 60). */
  rollback_timeout_s?: number;
}

/** `upgrade`: install a signed agent release (release.ts), health-gated, rolled back by the board itself. */
export interface UpgradeParams {
  /** The release manifest, a compact JWS signed by a pinned release key. */
  manifest: string;
  /** Seconds the new release has, once switched to, to start, connect, pass its self-test and report (30-3600, default 300). */
  deadline_s?: number;
  /** Install even when the release is older than the running one. */
  allow_downgrade?: boolean;
  /** An https:// URL the artifact may be downloaded from instead of the broker (each chunk is still checked). */
  mirror?: string;
}

export const DEFAULT_UPGRADE_DEADLINE_SECONDS = 300;

export type EmptyParams = Record<string, never>;

export interface ParamsByAction {
  request: EmptyParams;
  update: UpdateParams;
  rotate: EmptyParams;
  delete: EmptyParams;
  selftest: EmptyParams;
  upgrade: UpgradeParams;
}

export type ActionParams = ParamsByAction[Action];

// eslint-disable-next-line no-control-regex -- MQTT forbids U+0000 in a topic name
const MQTT_TOPIC = /^[^#+\u0000]{1,256}$/;
const BROKER_URL = /^mqtts?:\/\/[^\s/?#]+(:\d{1,5})?\/?$/;

/** Validates `params` for `action`; throws E_ACTION or E_PARAMS naming the offending member. */
export function validateParams<A extends Action>(action: A, params: unknown): ParamsByAction[A];
export function validateParams(action: string, params: unknown): ActionParams;
export function validateParams(action: string, params: unknown): ActionParams {
  if (!isAction(action)) throw new ProtocolError('E_ACTION', `unknown action "${String(action)}"`);
  const p = new Checker(params, 'params');
  if (action === 'update') return checkUpdate(p);
  if (action === 'upgrade') return checkUpgrade(p);
  p.allowOnly([]);
  return {};
}

function checkUpdate(p: Checker): UpdateParams {
  p.allowOnly(['user_id', 'sensor', 'reporting', 'gpio', 'broker', 'rollback_timeout_s']);
  const out: UpdateParams = {};
  const userId = p.optionalString('user_id', 1, 128);
  if (userId !== undefined) out.user_id = userId;
  const sensor = p.optionalObject('sensor');
  if (sensor) {
    sensor.allowOnly(['enabled', 'sample_interval_s', 'name']);
    out.sensor = dropUndefined({
      enabled: sensor.optionalBoolean('enabled'),
      sample_interval_s: sensor.optionalInt('sample_interval_s', 1, 86400),
      name: sensor.optionalString('name', 1, 64),
    });
  }
  const reporting = p.optionalObject('reporting');
  if (reporting) {
    reporting.allowOnly(['interval_s', 'topic']);
    const topic = reporting.optionalString('topic', 1, 256);
    if (topic !== undefined && (!MQTT_TOPIC.test(topic) || topic.startsWith('$'))) {
      throw reporting.fail('topic', 'must be an MQTT topic without wildcards and not starting with $');
    }
    out.reporting = dropUndefined({ interval_s: reporting.optionalInt('interval_s', 1, 86400), topic });
  }
  const gpio = p.optionalObject('gpio');
  if (gpio) {
    gpio.allowOnly(['status_led', 'sensor_enable', 'reset_button']);
    out.gpio = dropUndefined({
      status_led: gpio.optionalPin('status_led'),
      sensor_enable: gpio.optionalPin('sensor_enable'),
      reset_button: gpio.optionalPin('reset_button'),
    });
    if (firstDuplicatePin(Object.entries(out.gpio)) !== null) throw gpio.fail('', 'the same pin is used twice');
  }
  const broker = p.optionalObject('broker');
  if (broker) {
    broker.allowOnly(['url', 'ca', 'protocol_version']);
    const url = broker.requiredString('url', 1, 512);
    if (!BROKER_URL.test(url)) throw broker.fail('url', 'must be mqtt://host[:port] or mqtts://host[:port]');
    const ca = broker.optionalString('ca', 1, 16 * 1024);
    if (ca !== undefined && !ca.includes('-----BEGIN CERTIFICATE-----')) throw broker.fail('ca', 'must be PEM certificate text');
    const version = broker.optionalInt('protocol_version', 4, 5);
    out.broker = dropUndefined({ url, ca, protocol_version: version as 4 | 5 | undefined }) as BrokerSettings;
  }
  const rollback = p.optionalInt('rollback_timeout_s', 5, 600);
  if (rollback !== undefined) out.rollback_timeout_s = rollback;
  if (Object.keys(out).length === 0) throw new ProtocolError('E_PARAMS', 'params: update needs at least one setting');
  return out;
}

const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const HTTPS_URL = /^https:\/\/[^\s/?#]+(:\d{1,5})?\/[^\s#]*$/;

function checkUpgrade(p: Checker): UpgradeParams {
  p.allowOnly(['manifest', 'deadline_s', 'allow_downgrade', 'mirror']);
  const manifest = p.requiredString('manifest', 16, 8 * 1024);
  if (!COMPACT_JWS.test(manifest)) throw p.fail('manifest', 'must be a compact JWS');
  const out: UpgradeParams = { manifest };
  const deadline = p.optionalInt('deadline_s', 30, 3600);
  if (deadline !== undefined) out.deadline_s = deadline;
  const downgrade = p.optionalBoolean('allow_downgrade');
  if (downgrade !== undefined) out.allow_downgrade = downgrade;
  const mirror = p.optionalString('mirror', 12, 1024);
  if (mirror !== undefined) {
    if (!HTTPS_URL.test(mirror)) throw p.fail('mirror', 'must be an https:// URL with a path');
    out.mirror = mirror;
  }
  return out;
}

function dropUndefined<T extends object>(value: T): T {
  for (const k of Object.keys(value) as (keyof T)[]) if (value[k] === undefined) delete value[k];
  return value;
}

class Checker {
  readonly #value: Record<string, unknown>;
  readonly #path: string;

  constructor(value: unknown, path: string) {
    if (!isRecord(value)) throw new ProtocolError('E_PARAMS', `${path} must be an object`);
    this.#value = value;
    this.#path = path;
  }

  fail(key: string, why: string): ProtocolError {
    return new ProtocolError('E_PARAMS', `${key ? `${this.#path}.${key}` : this.#path} ${why}`);
  }

  allowOnly(keys: readonly string[]): void {
    for (const k of Object.keys(this.#value)) if (!keys.includes(k)) throw this.fail(k, 'is not a known setting');
  }

  optionalString(key: string, min: number, max: number): string | undefined {
    const v = this.#value[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v.length < min || v.length > max) throw this.fail(key, `must be a string of ${min}-${max} characters`);
    return v;
  }

  requiredString(key: string, min: number, max: number): string {
    const v = this.optionalString(key, min, max);
    if (v === undefined) throw this.fail(key, 'is required');
    return v;
  }

  optionalInt(key: string, min: number, max: number): number | undefined {
    const v = this.#value[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw this.fail(key, `must be an integer from ${min} to ${max}`);
    return v;
  }

  optionalBoolean(key: string): boolean | undefined {
    const v = this.#value[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'boolean') throw this.fail(key, 'must be true or false');
    return v;
  }

  optionalPin(key: string): number | null | undefined {
    if (this.#value[key] === null) return null;
    return this.optionalInt(key, 0, GPIO_PIN_MAX);
  }

  optionalObject(key: string): Checker | undefined {
    const v = this.#value[key];
    if (v === undefined) return undefined;
    return new Checker(v, `${this.#path}.${key}`);
  }
}
