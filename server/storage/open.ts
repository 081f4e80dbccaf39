/**
 * Which storage a server process uses, and opening it: a `postgres://` or
 * `postgresql://` URL is PostgreSQL (several server machines, one fleet);
 * anything else is the path of a SQLite file (the embedded default,
 * DATA/registry.sqlite). Chosen by `--registry`, else the environment's
 * PROVISION_SERVER_REGISTRY, else server.json's `registry`, else the data
 * directory's SQLite file (server/data-dir.ts).
 */
import { CodedError } from '../../protocol/index.js';
import { openPostgresStorage } from './postgres/index.js';
import { openSqliteStorage } from './sqlite/index.js';
import type { Storage } from './types.js';

export type RegistryLocation = { kind: 'sqlite'; path: string } | { kind: 'postgres'; url: string };

/** The environment variable naming the registry (a postgres:// URL or a SQLite path). */
export const REGISTRY_ENV = 'PROVISION_SERVER_REGISTRY';

export function isPostgresUrl(text: string): boolean {
  return /^postgres(ql)?:\/\//i.test(text);
}

/** A registry location from text: a postgres:// URL (checked) or a file path. */
export function parseRegistryLocation(text: string): RegistryLocation {
  const t = text.trim();
  if (t === '') throw new CodedError('E_USAGE', 'the registry location is empty: give a postgres://USER@HOST/DB URL or a SQLite file path');
  if (isPostgresUrl(t)) {
    let url: URL;
    try {
      url = new URL(t);
    } catch {
      throw new CodedError('E_USAGE', `registry URL ${redactUrl(t)} is not a URL: give postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`);
    }
    if (!url.hostname || url.pathname.replace(/^\//, '') === '') {
      throw new CodedError('E_USAGE', `registry URL ${redactUrl(t)} must name a host and a database: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`);
    }
    return { kind: 'postgres', url: t };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(t)) {
    throw new CodedError('E_USAGE', `registry ${redactUrl(t)}: only postgres:// (or postgresql://) URLs and SQLite file paths are registries`);
  }
  return { kind: 'sqlite', path: t };
}

/** A URL as it may be shown or logged: its password replaced by ***. */
export function redactUrl(text: string): string {
  return text.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*:)[^@/]*@/i, '$1***@');
}

export interface OpenStorageOptions {
  /** Create when missing (SQLite: the file; PostgreSQL: the schema is always migrated at open). */
  create?: boolean;
  now?: () => number;
}

export async function openStorage(location: RegistryLocation, options: OpenStorageOptions = {}): Promise<Storage> {
  return location.kind === 'postgres' ? openPostgresStorage(location.url, options) : openSqliteStorage(location.path, options);
}
