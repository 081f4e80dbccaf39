/**
 * Which role each route needs: one table, first match wins (route pattern +
 * method -> least role). Roles are ordered viewer < operator < admin.
 *   viewer:   every GET (a viewer sees everything, operators, token listings and
 *             enrollments included, and changes nothing; SSE included). No GET
 *             answers a secret: token texts are shown once, at creation.
 *   operator: sending commands, tagging, creating and controlling rollouts
 *   admin:    every change under /operators, /api-tokens, /enrollment
 * A request matching no row needs admin (closed by default: a route added
 * later without a row is an admin's until it gets one). Refused: 403 E_FORBIDDEN.
 */
import { CodedError } from '../../protocol/index.js';
import { OPERATOR_ROLES, type OperatorPrincipal, type OperatorRole } from '../storage/operator-records.js';

interface RoleRule {
  /** Methods it covers ('*': any). */
  methods: readonly string[] | '*';
  /** Path segments; '*' matches one segment, a trailing '**' any rest (also none). */
  pattern: readonly string[];
  role: OperatorRole;
  /** What the refusal says the role may not do. */
  what: string;
}

const rule = (methods: readonly string[] | '*', path: string, role: OperatorRole, what: string): RoleRule => ({
  methods,
  pattern: path.split('/').filter(Boolean),
  role,
  what,
});

export const ROLE_TABLE: readonly RoleRule[] = [
  rule(['GET'], '/**', 'viewer', 'read'),
  rule('*', '/operators/**', 'admin', 'manage operators'),
  rule('*', '/api-tokens/**', 'admin', 'manage API tokens'),
  rule('*', '/enrollment/**', 'admin', 'manage enrollments'),
  rule(['POST'], '/devices/*/commands', 'operator', 'send commands'),
  rule(['PUT', 'DELETE'], '/devices/*/tags/*', 'operator', 'tag devices'),
  rule(['POST'], '/devices/tags', 'operator', 'tag devices'),
  rule(['POST'], '/rollouts', 'operator', 'start rollouts'),
  rule(['POST'], '/rollouts/*/pause', 'operator', 'control rollouts'),
  rule(['POST'], '/rollouts/*/resume', 'operator', 'control rollouts'),
  rule(['POST'], '/rollouts/*/cancel', 'operator', 'control rollouts'),
  rule(['POST'], '/rollouts/*/retry', 'operator', 'start rollouts'),
];

function matches(pattern: readonly string[], parts: readonly string[]): boolean {
  for (let i = 0; i < pattern.length; i++) {
    const p = pattern[i];
    if (p === '**') return true;
    if (i >= parts.length) return false;
    if (p !== '*' && p !== parts[i]) return false;
  }
  return pattern.length === parts.length;
}

/** The least role for `method` on the path `parts`, and what the refusal names. */
export function requiredRole(method: string, parts: readonly string[]): { role: OperatorRole; what: string } {
  for (const r of ROLE_TABLE) {
    if ((r.methods === '*' || r.methods.includes(method)) && matches(r.pattern, parts)) return { role: r.role, what: r.what };
  }
  return { role: 'admin', what: `${method} /${parts.join('/')}` };
}

export function roleAtLeast(have: OperatorRole, need: OperatorRole): boolean {
  return OPERATOR_ROLES.indexOf(have) >= OPERATOR_ROLES.indexOf(need);
}

/** E_FORBIDDEN unless the principal's role may do `method` on `parts`. */
export function checkRole(principal: OperatorPrincipal, method: string, parts: readonly string[]): void {
  const { role, what } = requiredRole(method, parts);
  if (!roleAtLeast(principal.role, role)) {
    throw new CodedError('E_FORBIDDEN', `role ${principal.role} may not ${what} (${method} /${parts.join('/')} needs ${role})`);
  }
}
