/**
 * Strict query parsing for the API's route files (an unknown parameter, one
 * given twice or a bad value: 400 E_BAD_REQUEST naming it), and device ids in
 * paths. Bodies and answers: http-io.ts.
 */
import { CodedError, isValidId } from '../../protocol/index.js';

export function validDeviceId(value: string | undefined): string {
  if (!isValidId(value)) throw new CodedError('E_BAD_REQUEST', 'invalid device id');
  return value;
}

/** A name as an error message quotes it: JSON-quoted, at most 64 characters (query names are hostile input too). */
export const quoted = (s: string): string => JSON.stringify(s.length > 64 ? `${s.slice(0, 64)}...` : s);

/**
 * The query's parameters as one value each; an unknown one or one given twice
 * is E_BAD_REQUEST naming it.
 */
export function queryValues<K extends string>(q: URLSearchParams, known: readonly K[]): Partial<Record<K, string>> {
  const unknown = [...new Set(q.keys())].filter((k) => !(known as readonly string[]).includes(k));
  if (unknown.length) {
    throw new CodedError('E_BAD_REQUEST', `unknown query parameter(s): ${unknown.map(quoted).join(', ')} (known: ${known.join(', ')})`);
  }
  const out: Partial<Record<K, string>> = {};
  for (const k of known) {
    const values = q.getAll(k);
    if (values.length > 1) throw new CodedError('E_BAD_REQUEST', `query parameter ${k} given ${values.length} times`);
    if (values[0] !== undefined) out[k] = values[0];
  }
  return out;
}

/** A whole number in [min, max] from a query value, else E_BAD_REQUEST naming the parameter. */
export function intParam(name: string, value: string | undefined, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d{1,15}$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new CodedError('E_BAD_REQUEST', `query parameter ${name} must be a whole number from ${min} to ${max}`);
  }
  return Number(value);
}

/** `1` or `0` from a query value, else E_BAD_REQUEST naming the parameter. */
export function flagParam(name: string, value: string | undefined): boolean | undefined {
  if (value === undefined) return undefined;
  if (value !== '1' && value !== '0') throw new CodedError('E_BAD_REQUEST', `query parameter ${name} must be 1 or 0`);
  return value === '1';
}

/** One of `choices`, else E_BAD_REQUEST naming the parameter and the choices. */
export function choiceParam<T extends string>(name: string, value: string | undefined, choices: readonly T[]): T | undefined {
  if (value === undefined) return undefined;
  if (!(choices as readonly string[]).includes(value)) throw new CodedError('E_BAD_REQUEST', `query parameter ${name} must be one of ${choices.join(', ')}`);
  return value as T;
}

/** A text of 1..max characters, else E_BAD_REQUEST naming the parameter. */
export function textParam(name: string, value: string | undefined, max: number): string | undefined {
  if (value === undefined) return undefined;
  if (value.length === 0 || value.length > max) throw new CodedError('E_BAD_REQUEST', `query parameter ${name} must be 1 to ${max} characters`);
  return value;
}
