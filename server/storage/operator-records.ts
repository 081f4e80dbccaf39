/**
 * Operator accounts as the storage keeps them (the `operators` concern of
 * server/storage/types.ts): operators (name, role, password hash in the
 * encoded form of server/operators/password.ts, disabled), their API tokens
 * and their console sessions, with the rows both backends read and the checks
 * both apply before writing. Token and session secrets are 32 random bytes
 * (base64url) of which only the SHA-256 is stored (server/storage/tokens.ts).
 */
import { RegistryError } from './errors.js';

export const OPERATOR_ROLES = ['viewer', 'operator', 'admin'] as const;
export type OperatorRole = (typeof OPERATOR_ROLES)[number];

/** 1-64 characters: a lower-case letter first, then lower-case letters, digits, `.`, `_`, `-`. */
export const OPERATOR_NAME = /^[a-z][a-z0-9._-]{0,63}$/;

export interface OperatorRecord {
  name: string;
  role: OperatorRole;
  createdAt: number;
  updatedAt: number;
  /** When it was disabled (null: enabled): it cannot log in, its tokens and sessions are refused. */
  disabledAt: number | null;
}

export interface NewOperator {
  name: string;
  role: OperatorRole;
  /** The encoded hash (server/operators/password.ts), never the password. */
  passwordHash: string;
}

export interface OperatorTokenRecord {
  /** The public id (listing, revoking); not the secret. */
  id: string;
  operator: string;
  label: string;
  createdAt: number;
  expiresAt: number | null;
  lastUsedAt: number | null;
  revokedAt: number | null;
}

/** Who a token or a session authenticates. */
export interface OperatorPrincipal {
  name: string;
  role: OperatorRole;
}

export interface SessionLimits {
  /** Ends after this long without a request. */
  idleMs: number;
  /** Ends this long after login, however busy. */
  absoluteMs: number;
}

export interface OperatorRow {
  name: string;
  role: string;
  password_hash: string;
  created_at: number;
  updated_at: number;
  disabled_at: number | null;
}

export interface OperatorTokenRow {
  hash: string;
  id: string;
  operator: string;
  label: string;
  created_at: number;
  expires_at: number | null;
  last_used_at: number | null;
  revoked_at: number | null;
}

export const operatorRecord = (r: OperatorRow): OperatorRecord => ({
  name: r.name,
  role: r.role as OperatorRole,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
  disabledAt: r.disabled_at,
});

export const operatorTokenRecord = (r: OperatorTokenRow): OperatorTokenRecord => ({
  id: r.id,
  operator: r.operator,
  label: r.label,
  createdAt: r.created_at,
  expiresAt: r.expires_at,
  lastUsedAt: r.last_used_at,
  revokedAt: r.revoked_at,
});

export function isOperatorRole(value: unknown): value is OperatorRole {
  return typeof value === 'string' && (OPERATOR_ROLES as readonly string[]).includes(value);
}

/** E_BAD_OPERATOR unless `name` is an operator name. */
export function checkOperatorName(name: unknown): string {
  if (typeof name !== 'string' || !OPERATOR_NAME.test(name)) {
    throw new RegistryError('E_BAD_OPERATOR', `"${String(name)}" is not an operator name: 1-64 characters of a-z 0-9 . _ - starting with a lower-case letter`);
  }
  return name;
}

/** E_BAD_OPERATOR unless `role` is one of the roles. */
export function checkOperatorRole(role: unknown): OperatorRole {
  if (!isOperatorRole(role)) throw new RegistryError('E_BAD_OPERATOR', `"${String(role)}" is not a role: ${OPERATOR_ROLES.join(', ')}`);
  return role;
}

/** E_BAD_OPERATOR unless it looks like an encoded hash (the storage never sees a password). */
export function checkPasswordHash(hash: unknown): string {
  if (typeof hash !== 'string' || !hash.startsWith('$scrypt$')) throw new RegistryError('E_BAD_OPERATOR', 'the password hash is not an encoded scrypt hash');
  return hash;
}

/** E_BAD_OPERATOR for a label that is empty, over 200 characters or has control characters. */
export function checkTokenLabel(label: string): string {
  // eslint-disable-next-line no-control-regex
  if (label.length === 0 || label.length > 200 || /[\u0000-\u001f\u007f]/.test(label)) {
    throw new RegistryError('E_BAD_OPERATOR', 'a token label is 1-200 characters without control characters');
  }
  return label;
}

/** Whether a session last seen at `lastSeenAt`, created at `createdAt`, is still valid at `now`. */
export function sessionLive(row: { created_at: number; last_seen_at: number; idle_ms: number; expires_at: number }, now: number): boolean {
  return now < row.expires_at && now < row.last_seen_at + row.idle_ms;
}
