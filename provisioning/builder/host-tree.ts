/**
 * `npm run build`'s last step: the agent tree for this machine and its own
 * Node (build/host), the artefact the tests, the demo and the bench run
 * (`node build/host/sensor-agent.mjs`): the same bundle the boards get, with
 * the epoll addon npm ci compiled for this Node (none where it did not build).
 */
import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO, buildAgentTree } from './build-agent.js';
import { isBuildError } from './errors.js';
import { hostTarget } from './targets.js';

export const HOST_TREE = join(REPO, 'build/host');

const arch = hostTarget();
try {
  if (arch === undefined) throw new Error(`this machine's CPU (${process.arch}) is not one build-agent knows`);
  const epoll = await lstat(join(REPO, 'node_modules/epoll/build/Release/epoll.node')).catch(() => undefined);
  const r = await buildAgentTree({
    arch,
    node: { kind: 'system', version: process.versions.node },
    gpio: epoll ? 'native' : 'omit',
    out: HOST_TREE,
    cacheDir: join(REPO, 'build/.cache'),
    // The tests and the bench run this tree with this Node, from its startup snapshot (test/helpers/agent-process.ts).
    snapshotNode: process.execPath,
  });
  for (const w of r.warnings) process.stderr.write(`build-agent: warning: ${w}\n`);
  process.stdout.write(`build-agent: host agent tree in ${HOST_TREE} (${r.files} files, ${(r.bytes / 1024).toFixed(0)} kB, GPIO ${r.info.gpio})\n`);
} catch (err) {
  process.stderr.write(`build-agent: ${isBuildError(err) ? `${err.code}: ` : ''}${(err as Error).message}\n`);
  process.exitCode = isBuildError(err) ? err.exitCode : 1;
}
