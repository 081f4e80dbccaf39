/** One-time enrollment tokens: 32 random bytes (base64url); only their SHA-256 is stored. */
import { createHash, randomBytes } from 'node:crypto';

export function newEnrollmentToken(): string {
  return randomBytes(32).toString('base64url');
}

/** The stored form: hex SHA-256 of the token text. Looking up by hash is a constant-time comparison in effect. */
export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}
