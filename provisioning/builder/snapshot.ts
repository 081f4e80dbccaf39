/**
 * The agent's V8 startup snapshot (sensor-agent.blob beside sensor-agent.mjs): the agent's modules
 * (node-jose with node-forge, mqtt, yargs and the Node built-ins they load) evaluated once, at
 * build time, by the very Node binary that will run them, with the unit's flags. The unit then
 * starts from it (`--snapshot-blob=`, through snapshot.env: systemd/sensor-agent.service) instead
 * of compiling and evaluating all of them at every start; a tree without it starts as before.
 *
 * A snapshot only loads into the Node that wrote it (same version, same build), so it is made only
 * for a tree that ships its Node (npm package or tarball), run natively or under qemu-user for
 * another CPU; never for `--node system` (the image's nodejs can be upgraded under it). Nothing
 * secret, random or time-dependent is in it: see SNAPSHOT_ENTRY in bundle-agent.ts (the build fails
 * if evaluating the modules touched randomness, a clock or a file, and node-forge's PRNG is
 * replaced after deserializing). Built without V8's code cache (`withoutCodeCache`): the cache would
 * stay resident (about 6 MB at idle) for little start time.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundleAgent } from './bundle-agent.js';

export const SNAPSHOT_FILE = 'sensor-agent.blob';
/** Read by the unit (EnvironmentFile=-): `SENSOR_AGENT_SNAPSHOT=--snapshot-blob=/opt/sensor-agent/sensor-agent.blob`. */
export const SNAPSHOT_ENV_FILE = 'snapshot.env';
export const SNAPSHOT_ENV_VAR = 'SENSOR_AGENT_SNAPSHOT';

/**
 * The V8 flags of the unit (systemd/sensor-agent.service, test/helpers/agent-process.ts's
 * AGENT_NODE_FLAGS; a deploy test holds all three equal): the snapshot is built with them, as the
 * flags that change V8's compiler must match between build and run.
 */
export const SNAPSHOT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=1', '--single-threaded', '--jitless', '--expose-gc'];

export interface SnapshotRunner {
  /** The Node binary that will run the agent (the tree's node/bin/node). */
  node: string;
  /** For another CPU: qemu-user and its environment (QEMU_LD_PREFIX, LD_LIBRARY_PATH). */
  emulator?: { file: string; env: Record<string, string> };
  /** Extra environment (e.g. LD_LIBRARY_PATH for the tree's libatomic). */
  env?: Record<string, string>;
}

export type SnapshotResult = { built: true; bytes: number; node_version: string } | { built: false; reason: string };

function run(file: string, args: readonly string[], cwd: string, env: Record<string, string>): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(file, [...args], { cwd, env, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024, timeout: 600_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? Number((err as { code?: unknown }).code) : -1) : 0;
      resolve({ code, out: `${stdout}${stderr}`.trim() });
    });
  });
}

/**
 * Writes DIR/sensor-agent.blob and DIR/snapshot.env (`unitPath`: the blob's path on the board) with
 * the runner's Node, or nothing and the reason when that Node cannot run here. The builder script
 * is in a fresh temporary directory, the working directory is / (as the unit's) and the environment
 * is minimal (nothing of this checkout or of the builder's environment is read while the modules
 * evaluate: the build fails if a module reads a file).
 */
export async function buildSnapshot(repo: string, dir: string, version: string, runner: SnapshotRunner, unitPath: string): Promise<SnapshotResult> {
  const work = await mkdtemp(join(tmpdir(), 'sensor-agent-snapshot-'));
  try {
    const entry = join(work, 'snapshot-entry.cjs');
    await bundleAgent(repo, entry, version, 'snapshot-entry');
    await rm(`${entry}.LEGAL.txt`, { force: true });
    await writeFile(join(work, 'snapshot.json'), JSON.stringify({ builder: entry, withoutCodeCache: true }));
    // The working directory is the unit's (/): yargs keeps it at import as where to look for a
    // package.json, as it would find it at run time without a snapshot.
    const cwd = '/';
    const env: Record<string, string> = { PATH: '/usr/bin:/bin', LC_ALL: 'C', MALLOC_ARENA_MAX: '1', ...runner.env, ...runner.emulator?.env };
    const [file, pre] = runner.emulator ? [runner.emulator.file, [runner.node]] : [runner.node, []];
    const probe = await run(file, [...pre, '--version'], cwd, env);
    if (probe.code !== 0) return { built: false, reason: `${runner.node} does not run here (${probe.out || `exit ${probe.code}`})` };
    const blob = join(dir, SNAPSHOT_FILE);
    const r = await run(file, [...pre, ...SNAPSHOT_NODE_FLAGS, `--snapshot-blob=${blob}`, '--build-snapshot-config', join(work, 'snapshot.json')], cwd, env);
    const made = await stat(blob).catch(() => undefined);
    if (r.code !== 0 || made === undefined) {
      await rm(blob, { force: true });
      // The entry's own checks (something random, clock-based or read from a file would be baked in)
      // always fail the build; under an emulator any other failure leaves the tree without a snapshot.
      if (runner.emulator !== undefined && !r.out.includes('sensor-agent snapshot:'))
        return { built: false, reason: `${runner.emulator.file} ${runner.node} could not build it (exit ${r.code}): ${r.out.split('\n').slice(-3).join(' ')}` };
      throw new Error(
        `building the startup snapshot with ${runner.node} failed (exit ${r.code}): ${r.out
          .split('\n')
          .filter((l) => !/not yet fully verified|may still work|issue tracker|trace-warnings/.test(l))
          .join('\n')}`,
      );
    }
    await writeFile(
      join(dir, SNAPSHOT_ENV_FILE),
      `# The agent's V8 startup snapshot (provisioning/builder/snapshot.ts), for ${probe.out.trim()} only.\n${SNAPSHOT_ENV_VAR}=--snapshot-blob=${unitPath}\n`,
    );
    return { built: true, bytes: made.size, node_version: probe.out.trim().replace(/^v/, '') };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
