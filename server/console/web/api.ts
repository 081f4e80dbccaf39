/**
 * The console's HTTP client: same origin, the session cookie, `X-Console: 1` on every request (the API's CSRF
 * check), JSON bodies. A refusal becomes an ApiError whose text is `CODE: message`, as the API sent it.
 */

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** `CODE: message`, as shown on the page. */
  get text(): string {
    return `${this.code}: ${this.message}`;
  }
}

/** Any thrown value as the text shown to the operator. */
export function errorText(err: unknown): string {
  if (err instanceof ApiError) return err.text;
  if (err instanceof Error) return `E_NETWORK: ${err.message}`;
  return `E_NETWORK: ${String(err)}`;
}

/** Called when the API answers 401 (the session ended): the app goes back to the login page. */
let onUnauthorized: (() => void) | undefined;
export function setUnauthorizedHandler(fn: () => void): void {
  onUnauthorized = fn;
}

type Query = Record<string, string | number | boolean | undefined | null>;

/** `/path?k=v` with empty members left out. */
export function withQuery(path: string, query?: Query): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/** A path segment, encoded (device ids and tags are user input). */
export const seg = (s: string): string => encodeURIComponent(s);

export async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { 'X-Console': '1', Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    cache: 'no-store',
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let data: unknown;
  try {
    data = text ? JSON.parse(text) : undefined;
  } catch {
    throw new ApiError(res.status, 'E_BAD_ANSWER', `the server answered ${res.status} with something that is not JSON`);
  }
  if (!res.ok) {
    const e = isErrorBody(data) ? data.error : { code: `E_HTTP_${res.status}`, message: res.statusText || 'request failed' };
    if (res.status === 401 && path !== '/session') onUnauthorized?.();
    throw new ApiError(res.status, e.code, e.message);
  }
  return data as T;
}

function isErrorBody(v: unknown): v is { error: { code: string; message: string } } {
  if (typeof v !== 'object' || v === null || !('error' in v)) return false;
  const e = (v as { error: unknown }).error;
  return typeof e === 'object' && e !== null && typeof (e as { code?: unknown }).code === 'string' && typeof (e as { message?: unknown }).message === 'string';
}

export const api = {
  get: <T>(path: string, query?: Query): Promise<T> => request<T>('GET', withQuery(path, query)),
  post: <T>(path: string, body?: unknown): Promise<T> => request<T>('POST', path, body ?? {}),
  put: <T>(path: string, body?: unknown): Promise<T> => request<T>('PUT', path, body),
  patch: <T>(path: string, body: unknown): Promise<T> => request<T>('PATCH', path, body),
  del: <T>(path: string): Promise<T> => request<T>('DELETE', path),
};
