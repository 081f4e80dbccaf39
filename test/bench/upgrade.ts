/**
 * Upgrades: the time from `provision-server send DEVICE upgrade --release V --wait`
 * to its `applied` ack, through mosquitto (TLS, production ACLs), for an
 * agent-only release (about 1 MB: the bundle, the board's Node stays) and for a
 * release that carries its own Node, on a host board (test/helpers/host-board.ts:
 * the real agent and the real root installer). What the figure holds: the
 * command, the download in 60 KiB chunks each checked against the signed index,
 * the root installer's second verification and unpack, the switch, the new
 * agent's start, connect, self-test and first report (the health gate), the
 * commit, and the ack.
 */
import { join } from 'node:path';
import { stat } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { BUILD_AGENT, DEVICE, buildHostTree, startUpgradeRig } from '../helpers/upgrade-rig.js';

const run = promisify(execFile);

export interface UpgradeFigure {
  release: 'agent-only' | 'with-node';
  version: string;
  artifact_mb: number;
  chunks: number;
  send_to_applied_s: number;
  status: string;
}

export interface UpgradeFigures {
  runs: UpgradeFigure[];
}

async function timedUpgrade(
  cli: (a: string[], t?: number) => Promise<{ code: number | null; stdout: string; stderr: string }>,
  version: string,
): Promise<{ seconds: number; status: string }> {
  const t0 = performance.now();
  const r = await cli(['send', DEVICE, 'upgrade', '--release', version, '--wait', '--timeout', '600s'], 660_000);
  const seconds = (performance.now() - t0) / 1000;
  const view = JSON.parse(r.stdout || '{}') as { status?: string };
  return { seconds: Math.round(seconds * 100) / 100, status: view.status ?? `exit ${r.code}: ${r.stderr.slice(0, 200)}` };
}

export async function benchUpgrade(options: { withNode: boolean; nodeVersion: string; log: (s: string) => void }): Promise<UpgradeFigures> {
  const rig = await startUpgradeRig();
  const runs: UpgradeFigure[] = [];
  try {
    const releases: { kind: UpgradeFigure['release']; version: string; build: (out: string) => Promise<void> }[] = [
      { kind: 'agent-only', version: '0.2.0', build: (out) => buildHostTree(out, '0.2.0') },
    ];
    if (options.withNode) {
      releases.push({
        kind: 'with-node',
        version: '0.3.0',
        build: async (out) => {
          await run(BUILD_AGENT, ['--arch', 'x64', '--node', options.nodeVersion, '--gpio', 'omit', '--agent-version', '0.3.0', '--out', out], {
            timeout: 600_000,
          });
        },
      });
    }
    for (const r of releases) {
      const tree = join(rig.dir, `tree-${r.version}`);
      await r.build(tree);
      const added = await rig.cli(['release', 'add', tree, '--json'], 300_000);
      if (added.code !== 0) throw new Error(`release add: ${added.stderr}`);
      const stored = JSON.parse(added.stdout) as { manifest?: { artifact?: { bytes?: number }; chunks?: { count?: number } } };
      const bytes = stored.manifest?.artifact?.bytes ?? (await stat(join(tree, 'sensor-agent.mjs'))).size;
      options.log(`upgrade: ${r.kind} release ${r.version} (${(bytes / 1e6).toFixed(1)} MB), send -> applied ...`);
      const t = await timedUpgrade(rig.cli, r.version);
      runs.push({
        release: r.kind,
        version: r.version,
        artifact_mb: Math.round((bytes / 1e6) * 100) / 100,
        chunks: stored.manifest?.chunks?.count ?? 0,
        send_to_applied_s: t.seconds,
        status: t.status,
      });
    }
  } finally {
    await rig.stop();
  }
  return { runs };
}
