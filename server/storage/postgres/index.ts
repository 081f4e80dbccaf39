// Placeholder on st-base: replaced by the PostgreSQL implementation (branch pg-core).
import { RegistryError } from '../../registry/errors.js';
import type { Storage } from '../types.js';

export interface PostgresOpenOptions {
  create?: boolean;
  now?: () => number;
}

export async function openPostgresStorage(_url: string, _options: PostgresOpenOptions = {}): Promise<Storage> {
  throw new RegistryError('E_NO_REGISTRY', 'PostgreSQL storage is not built yet');
}
