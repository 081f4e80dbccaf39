/**
 * The checks and steps of changing operator accounts that the command line
 * (`provision-server user`) and the HTTP API's admin routes share, so both
 * refuse the same input with the same codes: E_BAD_OPERATOR (name, role),
 * E_PASSWORD (length), E_NO_OPERATOR, and the storage's own (E_OPERATOR_EXISTS,
 * E_LAST_ADMIN). A password is checked before it is hashed, and an unknown
 * operator before a password is hashed for it.
 */
import { CodedError } from '../../protocol/index.js';
import { checkOperatorName, checkOperatorRole, type NewOperator, type OperatorRecord } from '../storage/operator-records.js';
import type { Storage } from '../storage/types.js';
import { checkPassword, hashPassword } from './password.js';

/** A new account's checked name and role and its password's hash; nothing stored yet. */
export async function newOperator(name: unknown, role: unknown, password: unknown): Promise<NewOperator> {
  const checked = { name: checkOperatorName(name), role: checkOperatorRole(role) };
  if (typeof password !== 'string') throw new CodedError('E_PASSWORD', 'the password must be a string');
  checkPassword(password);
  return { ...checked, passwordHash: await hashPassword(password) };
}

/** E_NO_OPERATOR unless there is an operator `name`. */
export async function requireOperator(storage: Storage, name: string): Promise<OperatorRecord> {
  const o = await storage.operators.get(name);
  if (!o) throw new CodedError('E_NO_OPERATOR', `no operator ${name}`);
  return o;
}

/** Sets an existing operator's password (its sessions end); `password` is read only once the operator is known to exist. */
export async function setOperatorPassword(storage: Storage, name: string, password: () => Promise<unknown>, by: string): Promise<void> {
  await requireOperator(storage, name);
  const text = await password();
  if (typeof text !== 'string') throw new CodedError('E_PASSWORD', 'the password must be a string');
  await storage.operators.setPassword(name, await hashPassword(text), by);
}
