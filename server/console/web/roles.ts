/** What each role may do, as the API's role table says (the server refuses anyway: this only hides controls). */
import type { Role } from './types.js';

const RANK: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };

/** True when `role` is at least `least`. */
export function can(role: Role, least: Role): boolean {
  return RANK[role] >= RANK[least];
}
