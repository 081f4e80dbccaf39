/** Refusals of the device registry, with stable codes. */
import { CodedError } from '../../protocol/index.js';

export type RegistryErrorCode =
  | 'E_SCHEMA'
  | 'E_NO_REGISTRY'
  | 'E_NO_DEVICE'
  | 'E_DEVICE_EXISTS'
  | 'E_NO_KEY'
  | 'E_DECOMMISSIONED'
  | 'E_TOKEN_INVALID'
  | 'E_TOKEN_USED'
  | 'E_TOKEN_EXPIRED'
  | 'E_TOKEN_DEVICE'
  | 'E_TOKEN_REVOKED'
  | 'E_NO_TOKEN'
  | 'E_NO_COMMAND'
  | 'E_NO_ROLLOUT'
  | 'E_ROLLOUT_STATE'
  | 'E_BAD_TAG'
  | 'E_BAD_OPERATOR'
  | 'E_OPERATOR_EXISTS'
  | 'E_NO_OPERATOR'
  | 'E_LAST_ADMIN'
  | 'E_NO_OPERATOR_TOKEN'
  | 'E_STORAGE_UNAVAILABLE'
  | 'E_REGISTRY_VERSION'
  | 'E_MIGRATE_NOT_EMPTY'
  | 'E_MIGRATE_COPY'
  | 'E_MIGRATE_VERIFY'
  | 'E_AUDIT_CANONICAL';

/** Each code's default message. */
export const REGISTRY_ERROR_CODES: Readonly<Record<RegistryErrorCode, string>> = {
  E_SCHEMA: 'the registry database has an unknown schema version',
  E_NO_REGISTRY: 'the registry database does not exist',
  E_NO_DEVICE: 'no such device',
  E_DEVICE_EXISTS: 'the device is already registered',
  E_NO_KEY: 'the device has no registered encryption key',
  E_DECOMMISSIONED: 'the device is decommissioned',
  E_TOKEN_INVALID: 'enrollment token unknown',
  E_TOKEN_USED: 'enrollment token already used',
  E_TOKEN_EXPIRED: 'enrollment token expired',
  E_TOKEN_REVOKED: 'enrollment token revoked',
  E_NO_TOKEN: 'no such enrollment token (or already revoked)',
  E_TOKEN_DEVICE: 'enrollment token bound to another device',
  E_NO_COMMAND: 'no such command',
  E_NO_ROLLOUT: 'no such rollout',
  E_ROLLOUT_STATE: 'the rollout is not in a state that allows this',
  E_BAD_TAG: 'not a valid tag',
  // operator accounts (server/storage/operators.ts)
  E_BAD_OPERATOR: 'not a valid operator name or role',
  E_OPERATOR_EXISTS: 'an operator with this name exists',
  E_NO_OPERATOR: 'no such operator',
  E_LAST_ADMIN: 'the last enabled admin cannot be removed or demoted',
  E_NO_OPERATOR_TOKEN: 'no such API token',
  E_STORAGE_UNAVAILABLE: 'the registry database is unavailable',
  // registry migrate (server/storage/migrate-registry.ts)
  E_REGISTRY_VERSION: 'the registry to migrate has another schema version than this program',
  E_MIGRATE_NOT_EMPTY: 'the target registry already holds data',
  E_MIGRATE_COPY: 'a table could not be copied',
  E_MIGRATE_VERIFY: 'the copy differs from the registry it was copied from',
  // the audit chain (server/storage/audit-chain.ts)
  E_AUDIT_CANONICAL: 'an audit entry is not canonical JSON',
};

export class RegistryError extends CodedError<RegistryErrorCode> {
  override readonly name = 'RegistryError';
  constructor(code: RegistryErrorCode, message?: string) {
    super(code, message ?? REGISTRY_ERROR_CODES[code]);
  }
}

export function isRegistryError(err: unknown): err is RegistryError {
  return err instanceof RegistryError;
}

/** E_NO_DEVICE naming unknown devices (the first 20, then how many more), as a list of named devices is refused. */
export function unknownDevices(ids: readonly string[]): RegistryError {
  if (ids.length === 1) return new RegistryError('E_NO_DEVICE', `device ${ids[0]} is not registered`);
  const shown = ids.slice(0, 20).join(', ');
  return new RegistryError('E_NO_DEVICE', `${ids.length} devices are not registered: ${shown}${ids.length > 20 ? `, ... (${ids.length - 20} more)` : ''}`);
}
