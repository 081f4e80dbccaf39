/** A fake agent tree (as build-agent lays one out) for release tests. */
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export const BUILT_AT = '2026-03-01T12:00:00.000Z';

/** An agent tree as build-agent lays it out, with a fake .build-info.json. */
export async function makeTree(dir: string, o: { version: string; arch?: string; payload?: number; info?: boolean; snapshot?: boolean }): Promise<string> {
  await mkdir(join(dir, 'node', 'bin'), { recursive: true });
  await mkdir(join(dir, 'native'), { recursive: true });
  await writeFile(join(dir, 'sensor-agent.mjs'), `// sensor-agent ${o.version}\nconsole.log('agent');\n`);
  await writeFile(join(dir, 'native', 'epoll.node'), randomBytes(o.payload ?? 150_000));
  await writeFile(join(dir, 'node', 'bin', 'node'), '#!/bin/sh\necho fake node\n', { mode: 0o755 });
  if (o.snapshot !== false) {
    await writeFile(join(dir, 'sensor-agent.blob'), randomBytes(1000));
    await writeFile(join(dir, 'snapshot.env'), 'NODE_SNAPSHOT=1\n');
  }
  if (o.info !== false)
    await writeFile(
      join(dir, '.build-info.json'),
      `${JSON.stringify({
        format: 2,
        agent_version: o.version,
        arch: o.arch ?? 'arm64',
        elf_machine: 'aarch64',
        node: { source: 'npm', version: 'v22.11.0', abi: '127', path: 'node/bin/node' },
        gpio: 'native',
        addon: null,
        bundle: 'sensor-agent.mjs',
        snapshot: o.snapshot !== false ? { path: 'sensor-agent.blob', node_version: '22.11.0', bytes: 1000 } : { none: 'not built' },
        built_on: 'x64',
        built_at: BUILT_AT,
      })}\n`,
    );
  return dir;
}
