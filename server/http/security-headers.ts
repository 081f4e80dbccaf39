/**
 * The security headers of every HTTP answer (set before routing, so refusals
 * carry them too). API answers: nothing may run or be framed, nothing cached.
 * The console's files (server/http/static-console.ts) get CONSOLE_CSP instead:
 * scripts, styles and connections from this origin only, no inline code.
 */
import type { ServerResponse } from 'node:http';

export const API_CSP = "default-src 'none'; frame-ancestors 'none'";

export const CONSOLE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** Sets the headers every answer carries (API default CSP; static-console replaces it). */
export function setSecurityHeaders(res: ServerResponse, options: { tls: boolean }): void {
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('Content-Security-Policy', API_CSP);
  res.setHeader('Referrer-Policy', 'no-referrer');
  res.setHeader('X-Frame-Options', 'DENY');
  res.setHeader('Cache-Control', 'no-store');
  if (options.tls) res.setHeader('Strict-Transport-Security', 'max-age=31536000');
}
