/**
 * The console's files, served without authentication (they hold no data; all
 * data is behind the API's auth) from dist/console (what `npm run build`
 * writes: index.html, app.js, app.css, ...):
 *   GET /            302 -> /console/
 *   GET /console     302 -> /console/
 *   GET /console/    index.html;  GET /console/NAME...  that file (GET and HEAD only)
 * A path segment that is empty, `.`/`..`, hidden (`.x`) or holds a slash,
 * backslash or NUL is refused (404), and the resolved file must be inside the
 * directory (symbolic links included). Each answer has its content type,
 * nosniff and CONSOLE_CSP (no inline script or style). Not built: 404
 * E_NO_CONSOLE saying so.
 */
import { readFile, realpath, stat } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { extname, join, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CodedError } from '../../protocol/index.js';
import { allow } from './http-io.js';
import { CONSOLE_CSP } from './security-headers.js';

/** dist/console next to dist/server (this file is dist/server/http/static-console.js). */
export const DEFAULT_CONSOLE_DIR = fileURLToPath(new URL('../../console/', import.meta.url));

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.webp': 'image/webp',
  '.woff2': 'font/woff2',
};

export function contentTypeOf(name: string): string {
  return CONTENT_TYPES[extname(name).toLowerCase()] ?? 'application/octet-stream';
}

/** Whether a request is for the console's files (routed here before authentication). */
export function isConsoleRequest(parts: readonly string[]): boolean {
  return parts.length === 0 || parts[0] === 'console';
}

const notFound = (path: string): CodedError => new CodedError('E_NOT_FOUND', `no console file ${path}`);

export async function serveConsole(dir: string, res: ServerResponse, url: URL, parts: string[], method: string): Promise<void> {
  allow(method, ['GET', 'HEAD']);
  if (parts.length === 0 || (parts.length === 1 && !url.pathname.endsWith('/'))) {
    res.writeHead(302, { Location: '/console/', 'Content-Length': 0 });
    return void res.end();
  }
  const names = parts.slice(1);
  if (names.length === 0) names.push('index.html');
  if (names.some((n) => n === '' || n.startsWith('.') || /[/\\\0]/.test(n))) throw notFound(url.pathname);
  let root: string;
  try {
    root = await realpath(dir);
    await stat(join(root, 'index.html'));
  } catch {
    throw new CodedError('E_NO_CONSOLE', `the console is not built (no ${join(dir, 'index.html')}): run npm run build`);
  }
  let file: string;
  try {
    file = await realpath(join(root, ...names));
    if (!file.startsWith(root + sep) || !(await stat(file)).isFile()) throw notFound(url.pathname);
  } catch {
    throw notFound(url.pathname);
  }
  const body = await readFile(file);
  res.setHeader('Content-Security-Policy', CONSOLE_CSP);
  res.setHeader('Cache-Control', 'no-cache');
  res.writeHead(200, { 'Content-Type': contentTypeOf(file), 'Content-Length': body.length });
  res.end(method === 'HEAD' ? undefined : body);
}
