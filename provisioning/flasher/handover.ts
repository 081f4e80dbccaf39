/**
 * The first-boot hand-over (provisioning/firstboot) run at flash time on a
 * mounted root: creates the agent's user there with systemd-sysusers --root
 * and gives it its files, exactly as the board would at first boot.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AGENT_USER, BOARD } from './board-layout.js';
import { FlashError } from './errors.js';
import type { AgentIds } from './plan.js';
import { mustRun, requireTool } from './run-tool.js';

/** uid/gid of a user in a root's /etc/passwd, or undefined. */
export function findUser(passwd: string, name: string): AgentIds | undefined {
  for (const line of passwd.split('\n')) {
    const f = line.split(':');
    if (f[0] === name && f.length >= 4) {
      const uid = Number(f[2]);
      const gid = Number(f[3]);
      if (Number.isInteger(uid) && Number.isInteger(gid)) return { uid, gid };
    }
  }
  return undefined;
}

export async function runHandover(root: string): Promise<AgentIds> {
  requireTool('systemd-sysusers', 'systemd');
  const sh = requireTool('sh', 'dash');
  await mustRun(sh, [join(root, BOARD.firstbootScript), '--root', root], 'the first-boot hand-over (systemd-sysusers, chown)');
  const ids = findUser(await readFile(join(root, 'etc/passwd'), 'utf8'), AGENT_USER);
  if (ids === undefined) throw new FlashError('E_TARGET', `the hand-over ran but ${AGENT_USER} is not in ${join(root, 'etc/passwd')}`);
  return ids;
}
