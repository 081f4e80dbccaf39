/**
 * Operator passwords hashed with scrypt (node:crypto; memory-hard), pure: no
 * storage, no I/O. The encoded form keeps its parameters and salt, so that the
 * parameters can be raised later (needsRehash: at the next login the password
 * is hashed anew):
 *
 *   $scrypt$ln=15,r=8,p=1$SALT$HASH    (SALT 16 bytes, HASH 32 bytes, base64url)
 *
 * ln is log2(N). Salt and hash have exactly these lengths (a truncated hash
 * would otherwise verify against a prefix of the key). Verification compares in constant time (timingSafeEqual) and
 * refuses parameters beyond MAX_LN/MAX_R/MAX_P (a hash from the database is
 * not trusted to ask for gigabytes of memory).
 */
import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { CodedError } from '../../protocol/index.js';

export interface ScryptParams {
  /** log2 of the cost N. */
  ln: number;
  r: number;
  p: number;
}

/** N = 2^15, r = 8, p = 1: 32 MiB and ~50-100 ms per hash on a small server. */
export const DEFAULT_SCRYPT: Readonly<ScryptParams> = { ln: 15, r: 8, p: 1 };
const MAX_LN = 20;
const MAX_R = 32;
const MAX_P = 16;
const SALT_BYTES = 16;
const KEY_BYTES = 32;
/** Passwords shorter than this are refused (E_PASSWORD). */
export const MIN_PASSWORD_LENGTH = 10;
/** Longer than this is refused too (a hash of megabytes is a cheap denial of service). */
export const MAX_PASSWORD_LENGTH = 1024;

const ENCODED = /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9_-]{22})\$([A-Za-z0-9_-]{43})$/;

function derive(password: string, salt: Buffer, params: ScryptParams, length: number): Promise<Buffer> {
  const N = 2 ** params.ln;
  // scrypt needs 128 * N * r bytes (plus a little); Node's default maxmem (32 MiB) is just below that for the default parameters.
  const options: ScryptOptions = { N, r: params.r, p: params.p, maxmem: 128 * N * params.r * 2 + 1024 * 1024 };
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFC'), salt, length, options, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/** E_PASSWORD for a password that is too short or too long. */
export function checkPassword(password: string): void {
  if (password.length < MIN_PASSWORD_LENGTH) throw new CodedError('E_PASSWORD', `a password has at least ${MIN_PASSWORD_LENGTH} characters`);
  if (password.length > MAX_PASSWORD_LENGTH) throw new CodedError('E_PASSWORD', `a password has at most ${MAX_PASSWORD_LENGTH} characters`);
}

/** The encoded hash of `password` with a fresh salt. */
export async function hashPassword(password: string, params: ScryptParams = DEFAULT_SCRYPT): Promise<string> {
  checkPassword(password);
  const salt = randomBytes(SALT_BYTES);
  const key = await derive(password, salt, params, KEY_BYTES);
  return `$scrypt$ln=${params.ln},r=${params.r},p=${params.p}$${salt.toString('base64url')}$${key.toString('base64url')}`;
}

interface Decoded {
  params: ScryptParams;
  salt: Buffer;
  key: Buffer;
}

function decode(encoded: string): Decoded | undefined {
  const m = ENCODED.exec(encoded);
  if (!m) return undefined;
  const params = { ln: Number(m[1]), r: Number(m[2]), p: Number(m[3]) };
  if (params.ln < 1 || params.ln > MAX_LN || params.r < 1 || params.r > MAX_R || params.p < 1 || params.p > MAX_P) return undefined;
  return { params, salt: Buffer.from(m[4] as string, 'base64url'), key: Buffer.from(m[5] as string, 'base64url') };
}

/** Whether `password` matches `encoded`; false (never a throw) for a hash that is not one this module wrote. */
export async function verifyPassword(password: string, encoded: string): Promise<boolean> {
  const d = decode(encoded);
  if (!d || password.length > MAX_PASSWORD_LENGTH) return false;
  const key = await derive(password, d.salt, d.params, d.key.length);
  return timingSafeEqual(key, d.key);
}

/** Whether `encoded` was made with weaker parameters than `params` (or cannot be read): hash the password again at the next login. */
export function needsRehash(encoded: string, params: ScryptParams = DEFAULT_SCRYPT): boolean {
  const d = decode(encoded);
  return !d || d.params.ln < params.ln || d.params.r < params.r || d.params.p < params.p;
}

/**
 * A hash of a random password with the default parameters, computed once: a
 * login for an unknown operator verifies against it, so that it takes as long
 * as one for a known operator (no user enumeration by timing).
 */
let dummy: Promise<string> | undefined;
export function dummyHash(): Promise<string> {
  dummy ??= hashPassword(randomBytes(24).toString('base64url'));
  return dummy;
}
