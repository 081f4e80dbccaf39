/** Checks on the target root before writing: its CPU (for native addons) and whether Node.js is there. */
import { elfMachine, type ElfMachine } from './agent-tree.js';

/** A root's CPU from one of its own binaries' ELF header (/usr/bin/env is on every Debian). */
export const PROBE_BINARY = '/usr/bin/env';

export function machineOf(header: Buffer | undefined): ElfMachine | undefined {
  if (header === undefined) return undefined;
  const m = elfMachine(header);
  return m === 'not-elf' ? undefined : m;
}

export function nodeMissingWarning(nodePath: string): string {
  return `${nodePath} is not on the target: install Node.js >= 20.19 there before the agent can start (Trixie: apt install nodejs; Bookworm: Node 20 or 22 from NodeSource or nodejs.org, see provisioning/README.md)`;
}
