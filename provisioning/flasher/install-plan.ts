/**
 * The install plan for one board: the built agent, the units and the
 * sysusers file with the enable symlink, config and trust anchors, the
 * enrollment token and any keys, the first-boot hand-over script and the
 * on-board CLI wrapper, each with its final mode and owner class.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AgentTree } from './agent-tree.js';
import { BOARD } from './board-layout.js';
import type { BoardBundle } from './bundle.js';
import type { DirEntry, InstallPlan, PlanEntry } from './plan.js';
import { checkPlan } from './plan.js';

/** The repository root (this module runs as dist/provisioning/flasher/install-plan.js). */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** Repository files that go onto every board. */
export const REPO_FILES = {
  agentUnit: join(REPO_ROOT, 'systemd/sensor-agent.service'),
  firstbootUnit: join(REPO_ROOT, 'systemd/sensor-agent-firstboot.service'),
  upgradeUnit: join(REPO_ROOT, 'systemd/sensor-agent-upgrade.service'),
  upgradePath: join(REPO_ROOT, 'systemd/sensor-agent-upgrade.path'),
  guard: join(REPO_ROOT, 'provisioning/upgrade-guard'),
  sysusers: join(REPO_ROOT, 'systemd/sysusers.d/sensor-agent.conf'),
  firstbootScript: join(REPO_ROOT, 'provisioning/firstboot'),
  cliWrapper: join(REPO_ROOT, 'provisioning/sensor-agent-cli'),
} as const;

const SYSTEM_PARENTS = [
  '/opt',
  '/etc',
  '/etc/systemd',
  BOARD.unitDir,
  BOARD.wantsDir,
  BOARD.pathsWantsDir,
  BOARD.sysusersDir,
  '/var',
  '/var/lib',
  '/usr',
  '/usr/lib',
  '/usr/local',
  '/usr/local/lib',
  '/usr/local/bin',
];

export function buildInstallPlan(bundle: BoardBundle, agent: AgentTree, flashedAt: Date = new Date()): InstallPlan {
  const entries: PlanEntry[] = [];
  for (const path of SYSTEM_PARENTS) entries.push({ kind: 'parent', path });

  // The agent, root-owned and read-only for everyone else, as release VERSION:
  // /opt/sensor-agent-releases/VERSION, and /opt/sensor-agent a relative link to it
  // (the upgrade guard switches that link; docs/CONTRACTS.md, "On the board").
  const release = `${BOARD.releasesDir}/${agent.buildInfo.agentVersion}`;
  entries.push({ kind: 'dir', path: BOARD.releasesDir, mode: 0o755, owner: 'root' });
  entries.push({ kind: 'dir', path: release, mode: 0o755, owner: 'root' });
  for (const e of agent.entries) {
    const path = `${release}/${e.rel}`;
    if (e.kind === 'dir') entries.push({ kind: 'dir', path, mode: 0o755, owner: 'root' });
    else if (e.kind === 'symlink') entries.push({ kind: 'symlink', path, target: e.target ?? '' });
    else entries.push({ kind: 'file', path, mode: e.mode, owner: 'root', source: { path: e.from ?? '' }, secret: false });
  }
  // A tree built with --node system runs on the image's /usr/bin/node: the unit's path links there.
  if (agent.buildInfo.node.source === 'system') {
    for (const dir of [`${release}/node`, `${release}/node/bin`]) {
      if (!agent.entries.some((e) => `${release}/${e.rel}` === dir)) entries.push({ kind: 'dir', path: dir, mode: 0o755, owner: 'root' });
    }
    entries.push({ kind: 'symlink', path: `${release}/node/bin/node`, target: BOARD.node });
  }
  entries.push({ kind: 'symlink', path: BOARD.agentDir, target: `${BOARD.releasesRel}/${agent.buildInfo.agentVersion}` });

  // systemd: units, sysusers, enable symlink; first-boot script and CLI wrapper.
  entries.push({ kind: 'file', path: BOARD.agentUnit, mode: 0o644, owner: 'root', source: { path: REPO_FILES.agentUnit }, secret: false });
  entries.push({ kind: 'file', path: BOARD.firstbootUnit, mode: 0o644, owner: 'root', source: { path: REPO_FILES.firstbootUnit }, secret: false });
  entries.push({ kind: 'symlink', path: BOARD.enableLink, target: BOARD.agentUnit });
  // Upgrades: the root guard, and the units that run it (enabled: the path unit, and the service at boot).
  entries.push({ kind: 'file', path: BOARD.upgradeUnit, mode: 0o644, owner: 'root', source: { path: REPO_FILES.upgradeUnit }, secret: false });
  entries.push({ kind: 'file', path: BOARD.upgradePath, mode: 0o644, owner: 'root', source: { path: REPO_FILES.upgradePath }, secret: false });
  entries.push({ kind: 'symlink', path: BOARD.upgradeEnableLink, target: BOARD.upgradeUnit });
  entries.push({ kind: 'symlink', path: BOARD.upgradePathEnableLink, target: BOARD.upgradePath });
  entries.push({ kind: 'dir', path: BOARD.guardDir, mode: 0o755, owner: 'root' });
  entries.push({ kind: 'file', path: BOARD.guard, mode: 0o755, owner: 'root', source: { path: REPO_FILES.guard }, secret: false });
  entries.push({ kind: 'file', path: BOARD.sysusers, mode: 0o644, owner: 'root', source: { path: REPO_FILES.sysusers }, secret: false });
  entries.push({ kind: 'dir', path: BOARD.libexecDir, mode: 0o755, owner: 'root' });
  entries.push({ kind: 'file', path: BOARD.firstbootScript, mode: 0o755, owner: 'root', source: { path: REPO_FILES.firstbootScript }, secret: false });
  entries.push({ kind: 'file', path: BOARD.cliWrapper, mode: 0o755, owner: 'root', source: { path: REPO_FILES.cliWrapper }, secret: false });

  // Configuration: the directory and public files readable by the agent's group only.
  entries.push({ kind: 'dir', path: BOARD.configDir, mode: 0o750, owner: 'root:agent' });
  entries.push({
    kind: 'file',
    path: BOARD.config,
    mode: 0o640,
    owner: 'root:agent',
    source: { content: `${JSON.stringify(bundle.config, null, 2)}\n` },
    secret: false,
  });
  // State: the agent's alone (systemd's StateDirectory=, 0700).
  entries.push({ kind: 'dir', path: BOARD.stateRoot, mode: 0o700, owner: 'agent' });
  entries.push({ kind: 'dir', path: BOARD.keystore, mode: 0o700, owner: 'agent' });
  entries.push({ kind: 'dir', path: BOARD.stateDir, mode: 0o700, owner: 'agent' });
  for (const d of bundle.extraDirs) entries.push({ kind: 'dir', path: d.path, mode: d.mode, owner: d.owner } satisfies DirEntry);
  for (const f of bundle.files) entries.push({ kind: 'file', path: f.to, mode: f.mode, owner: f.owner, source: { path: f.from }, secret: f.secret });
  // Until the hand-over has run, this says so (and makes sensor-agent-firstboot.service run).
  entries.push({
    kind: 'file',
    path: BOARD.firstbootPending,
    mode: 0o600,
    owner: 'root',
    source: { content: `flashed ${flashedAt.toISOString()} for device ${bundle.deviceId} by provisioning/flash\n` },
    secret: false,
  });

  const plan: InstallPlan = { replace: [BOARD.agentDir, BOARD.releasesDir, BOARD.configDir, BOARD.stateRoot, BOARD.upgradeStateDir], entries };
  checkPlan(plan);
  return plan;
}
