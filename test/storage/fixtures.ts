/** Small builders for the shared storage suite: real device keys, devices, commands, acks, reports, releases, rollout specs. */
import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import {
  generateEncryptionKey,
  generateSigningKey,
  toPublicJwk,
  type AckClaims,
  type PublicJwk,
  type ReleaseManifest,
  type ReportClaims,
} from '../../protocol/index.js';
import type { DeviceState, NewCommand, RolloutSpec } from '../../server/storage/records.js';
import type { Storage } from '../../server/storage/types.js';

export interface KeyPair {
  signing: PublicJwk;
  encryption: PublicJwk;
}

/** A fresh pair of a device's public keys (real EC keys, real kids). */
export async function keyPair(): Promise<KeyPair> {
  const [s, e] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
  return { signing: toPublicJwk(s), encryption: toPublicJwk(e) };
}

/** A settable clock for `open({ now })`. */
export class Clock {
  t: number;
  constructor(start = 1_700_000_000_000) {
    this.t = start;
  }
  readonly now = (): number => this.t;
  /** Moves the clock by `ms` (negative: back). */
  advance(ms: number): number {
    this.t += ms;
    return this.t;
  }
}

/** Registers a device with fresh keys. */
export async function addDevice(s: Storage, id: string, options: { userId?: string | null; state?: DeviceState; keys?: KeyPair } = {}): Promise<KeyPair> {
  const keys = options.keys ?? (await keyPair());
  await s.devices.add({
    id,
    userId: options.userId === undefined ? 'alice' : options.userId,
    origin: 'jwks',
    signing: keys.signing,
    encryption: keys.encryption,
    state: options.state ?? 'provisioned',
  });
  return keys;
}

/** A command for `deviceId` with its seq allocated, recorded; returns it. */
export async function sendCommand(s: Storage, deviceId: string, fields: Partial<NewCommand> = {}): Promise<NewCommand> {
  const { seq, device } = await s.seq.allocate(deviceId);
  const c: NewCommand = {
    jti: randomUUID(),
    deviceId,
    action: 'selftest',
    userId: device.userId ?? 'alice',
    paramsDigest: `sha256:${'0'.repeat(64)}`,
    seq,
    encryptionKid: device.encryption?.kid ?? 'none',
    sealed: `sealed-${seq}-${randomUUID()}`,
    expiresAt: s.now() + 60_000,
    ...fields,
  };
  await s.commands.record(c);
  return c;
}

export function ack(c: { jti: string; deviceId: string; seq: number }, fields: Partial<AckClaims> = {}): AckClaims {
  return {
    iss: c.deviceId,
    aud: 'provision-server',
    iat: 0,
    jti: randomUUID(),
    ref: c.jti,
    seq: c.seq,
    status: 'applied',
    code: 'OK',
    detail: '',
    ...fields,
  };
}

export function report(deviceId: string, fields: Partial<ReportClaims> = {}): ReportClaims {
  return {
    iss: deviceId,
    aud: 'provision-server',
    iat: 1,
    jti: randomUUID(),
    reason: 'connect',
    session: 'sess-1',
    conn: 1,
    run: 1,
    n: 1,
    interval_s: 60,
    agent_version: '1.0.0',
    node_version: 'v20.19.0',
    last_seq: 0,
    kids: { sig: 'sig-kid', enc: 'enc-kid' },
    settings_digest: `sha256:${'a'.repeat(64)}`,
    uptime_s: 10,
    selftest: null,
    ...fields,
  };
}

export function manifest(version: string, arch: 'arm64' | 'armv7' | 'x64', sha256 = randomSha()): ReleaseManifest {
  return {
    format: 1,
    version,
    arch,
    node: { ships: false, version: 'v20.19.0', abi: '115', binary_sha256: null },
    gpio: 'omit',
    snapshot: false,
    artifact: { bytes: 1234, sha256, unpacked_bytes: 5678 },
    chunks: { bytes: 65536, count: 1, index_sha256: randomSha() },
    created_at: '2026-01-01T00:00:00.000Z',
  };
}

export function randomSha(): string {
  return (randomUUID() + randomUUID()).replace(/-/g, '').slice(0, 64);
}

export function spec(selector: RolloutSpec['selector'], fields: Partial<RolloutSpec> = {}): RolloutSpec {
  return {
    action: 'selftest',
    params: {},
    selector,
    ttlSeconds: 120,
    deadlineAt: 1_700_000_000_000 + 3600_000,
    abortMin: 10,
    concurrency: 8,
    ...fields,
  };
}

/** Awaits `p` and asserts it rejects with `code`; returns the error. */
export async function rejects(p: Promise<unknown>, code: string): Promise<Error & { code?: string }> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, `expected a rejection with ${code}`).to.be.instanceOf(Error);
  expect((err as { code?: string }).code, (err as Error).message).to.equal(code);
  return err as Error & { code?: string };
}

/** Awaits `p` and asserts it rejects (any error); returns it. */
export async function rejectsAny(p: Promise<unknown>): Promise<Error> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, 'expected a rejection').to.be.instanceOf(Error);
  return err as Error;
}
