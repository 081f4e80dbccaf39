/** A small HTTP client for the console API's auth tests: a cookie jar of one session, the console header, bearer tokens. */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { hashPassword } from '../../server/operators/password.js';
import type { OperatorRole } from '../../server/storage/operator-records.js';
import type { Storage } from '../../server/storage/types.js';

export type ApiBody = Record<string, unknown> & { error?: { code: string; message: string } };

export interface ApiAnswer {
  status: number;
  body: ApiBody;
  headers: Headers;
}

export interface CallOptions {
  body?: unknown;
  /** Extra or overriding headers. */
  headers?: Record<string, string>;
  /** Send X-Console: 1 (default true with a cookie session). */
  console?: boolean;
}

export class ApiClient {
  readonly base: string;
  cookie: string | undefined;
  bearer: string | undefined;
  /** TLS test clients pass their own fetch-like dispatcher. */
  constructor(base: string, auth: { bearer?: string } = {}) {
    this.base = base;
    this.bearer = auth.bearer;
  }

  async call(method: string, path: string, options: CallOptions = {}): Promise<ApiAnswer> {
    const headers: Record<string, string> = {};
    if (this.cookie !== undefined) headers.cookie = this.cookie;
    if (this.bearer !== undefined) headers.authorization = `Bearer ${this.bearer}`;
    if (options.console ?? this.cookie !== undefined) headers['x-console'] = '1';
    if (options.body !== undefined) headers['content-type'] = 'application/json';
    Object.assign(headers, options.headers ?? {});
    const res = await fetch(`${this.base}${path}`, {
      method,
      headers,
      redirect: 'manual',
      ...(options.body !== undefined ? { body: JSON.stringify(options.body) } : {}),
    });
    const text = await res.text();
    const body = (text && res.headers.get('content-type')?.startsWith('application/json') ? JSON.parse(text) : {}) as ApiBody;
    return { status: res.status, body, headers: res.headers };
  }

  /** POST /session; keeps the cookie on success. */
  async login(name: string, password: string, options: CallOptions = {}): Promise<ApiAnswer> {
    const a = await this.call('POST', '/session', { console: true, ...options, body: { name, password } });
    const set = a.headers.get('set-cookie');
    if (a.status === 200 && set) this.cookie = set.split(';')[0];
    return a;
  }
}

export const PASSWORD = 'correct horse battery';

/** Adds operators (password PASSWORD) straight to the registry, as `provision-server user add` does. */
export async function addOperators(storage: Storage, operators: Record<string, OperatorRole>): Promise<void> {
  const passwordHash = await hashPassword(PASSWORD);
  for (const [name, role] of Object.entries(operators)) await storage.operators.add({ name, role, passwordHash }, 'cli:test');
}

export async function legacyToken(dataDir: string): Promise<string> {
  return (await readFile(join(dataDir, 'http.token'), 'utf8')).trim();
}
