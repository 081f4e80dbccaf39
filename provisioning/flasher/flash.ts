/**
 * `provisioning/flash`: installs a bundle from `provision-server bundle` and
 * the built agent onto a board's root file system, either a mounted root
 * (`--root DIR`, as root) or a raw Raspberry Pi OS image (`--image FILE`,
 * through debugfs and mtools without privileges, or loop devices as root).
 *
 * Ownership: where flash runs as root on a mounted root (--root, or an image
 * through loop devices) it creates the agent's user there (systemd-sysusers
 * --root) and hands the files over at once. Without root (debugfs) it writes
 * every file with its final mode but owned by root, so secrets are root 0600
 * in root-only directories, and hooks the hand-over into the image's first
 * boot: Raspberry Pi OS's own route (firstrun.sh or cloud-init) plus
 * sensor-agent-firstboot.service.
 */
import { lstat, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { readAgentTree, type ElfMachine } from './agent-tree.js';
import { AGENT_USER, BOARD } from './board-layout.js';
import { readBundle } from './bundle.js';
import { FlashError } from './errors.js';
import { Ext4Image } from './ext4-image.js';
import { FatImage } from './fat-image.js';
import {
  detectRoute,
  extendCmdline,
  extendFirstrun,
  extendUserData,
  newFirstrun,
  newMetaData,
  newUserData,
  osCodename,
  type FirstBootRoute,
} from './first-boot-route.js';
import { findUser, runHandover } from './handover.js';
import { buildInstallPlan, REPO_ROOT } from './install-plan.js';
import { loopAvailable, withLoopMountedRoot } from './loop-mount.js';
import { readImageLayout } from './partitions.js';
import type { AgentIds, InstallPlan } from './plan.js';
import { applyPlanToRoot } from './root-target.js';
import { checkTreeForTarget, dpkgNodeVersion, machineOf, PROBE_BINARY, type TargetFacts } from './target-checks.js';

export type ImageMethod = 'auto' | 'debugfs' | 'loop';

export interface FlashOptions {
  bundle: string;
  /** Built agent tree (default: <repo>/build/sensor-agent, made by provisioning/build-agent). */
  agent?: string;
  root?: string;
  image?: string;
  method?: ImageMethod;
  firstBoot?: 'auto' | FirstBootRoute;
}

export interface FlashReport {
  deviceId: string;
  target: string;
  method: 'root' | 'debugfs' | 'loop';
  /** 'final': owned by the agent's user now; 'first-boot': root-owned until the hand-over at first boot. */
  ownership: 'final' | 'first-boot';
  ids?: AgentIds;
  route?: { route: FirstBootRoute; why: string };
  targetMachine?: ElfMachine;
  entries: number;
  warnings: string[];
}

export const DEFAULT_AGENT_DIR = join(REPO_ROOT, 'build/sensor-agent');

async function readLocal(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch {
    return undefined;
  }
}

async function flashMountedRoot(
  plan: InstallPlan,
  root: string,
  agentCheck: (facts: TargetFacts) => void,
): Promise<{ ids: AgentIds; machine: ElfMachine | undefined }> {
  const machine = machineOf((await readLocal(join(root, PROBE_BINARY)))?.subarray(0, 20));
  agentCheck({
    machine,
    systemNode: (await lstat(join(root, BOARD.node)).catch(() => undefined)) !== undefined,
    systemNodeVersion: dpkgNodeVersion((await readLocal(join(root, BOARD.dpkgStatus)))?.toString('utf8')),
  });
  await applyPlanToRoot(plan, root, undefined);
  const ids = await runHandover(root);
  return { ids, machine };
}

export async function flash(options: FlashOptions): Promise<FlashReport> {
  if ((options.root === undefined) === (options.image === undefined)) {
    throw new FlashError('E_USAGE', 'give exactly one target: --root DIR or --image FILE');
  }
  const bundle = await readBundle(options.bundle);
  const agent = await readAgentTree(options.agent ?? DEFAULT_AGENT_DIR);
  const plan = buildInstallPlan(bundle, agent);
  const warnings: string[] = [];
  const agentCheck = (facts: TargetFacts): void => {
    warnings.push(...checkTreeForTarget(agent, facts));
  };
  if (agent.addons.length === 0) {
    warnings.push('the agent ships without its native GPIO addon (built with --gpio omit): the agent runs with GPIO off');
  }

  if (options.root !== undefined) {
    const root = resolve(options.root);
    if (options.method !== undefined || options.firstBoot !== undefined) throw new FlashError('E_USAGE', '--method and --first-boot apply to --image only');
    const { ids, machine } = await flashMountedRoot(plan, root, agentCheck);
    return {
      deviceId: bundle.deviceId,
      target: root,
      method: 'root',
      ownership: 'final',
      ids,
      ...(machine ? { targetMachine: machine } : {}),
      entries: plan.entries.length,
      warnings,
    };
  }

  const image = resolve(options.image ?? '');
  const st = await lstat(image).catch(() => undefined);
  if (!st?.isFile()) throw new FlashError('E_IMAGE', `${image} is not a regular file (flash writes image files; for a card, mount it and use --root)`);
  const layout = await readImageLayout(image);
  let method = options.method ?? 'auto';
  // --first-boot only means something for the unprivileged route, so it picks that one.
  if (method === 'auto') method = options.firstBoot === undefined && (await loopAvailable(image, layout.root)) ? 'loop' : 'debugfs';

  if (method === 'loop') {
    if (options.firstBoot !== undefined)
      throw new FlashError('E_USAGE', '--first-boot applies to --method debugfs: through loop devices the hand-over happens at flash time');
    const { ids, machine } = await withLoopMountedRoot(image, layout.root, (mnt) => flashMountedRoot(plan, mnt, agentCheck));
    return {
      deviceId: bundle.deviceId,
      target: image,
      method: 'loop',
      ownership: 'final',
      ids,
      ...(machine ? { targetMachine: machine } : {}),
      entries: plan.entries.length,
      warnings,
    };
  }

  // Unprivileged: debugfs for the ext4 root, mtools for the FAT boot partition.
  const ext4 = new Ext4Image(image, layout.root.offset);
  const fat = new FatImage(image, layout.boot.offset);
  await ext4.checkWritable();
  const machine = machineOf((await ext4.readFile(PROBE_BINARY))?.subarray(0, 20));
  const types = await ext4.types([BOARD.node, '/etc/cloud/cloud.cfg', '/usr/bin/cloud-init']);
  agentCheck({
    machine,
    systemNode: types.get(BOARD.node) !== undefined,
    systemNodeVersion: agent.buildInfo.node.source === 'system' ? dpkgNodeVersion((await ext4.readFile(BOARD.dpkgStatus))?.toString('utf8')) : undefined,
  });
  // A golden image (or a re-flash) may already have the user: then owners are final right away.
  const passwd = await ext4.readFile('/etc/passwd');
  const ids = passwd === undefined ? undefined : findUser(passwd.toString('utf8'), AGENT_USER);
  await ext4.applyPlan(plan, ids);

  const bootFiles = await fat.list();
  const osRelease = (await ext4.readFile('/usr/lib/os-release')) ?? (await ext4.readFile('/etc/os-release'));
  const hasCloudInit = types.get('/etc/cloud/cloud.cfg') !== undefined || types.get('/usr/bin/cloud-init') !== undefined;
  const route =
    options.firstBoot === undefined || options.firstBoot === 'auto'
      ? detectRoute(bootFiles, osCodename(osRelease?.toString('utf8')), hasCloudInit)
      : { route: options.firstBoot, why: 'chosen with --first-boot' };
  if (route.route === 'firstrun') {
    const cmdline = await fat.read('cmdline.txt');
    if (cmdline === undefined)
      throw new FlashError(
        'E_IMAGE',
        `${image}: the boot partition has no cmdline.txt, so firstrun.sh cannot be hooked in (use --first-boot cloud-init, or rely on sensor-agent-firstboot.service)`,
      );
    const existing = await fat.read('firstrun.sh');
    await fat.write('firstrun.sh', existing === undefined ? newFirstrun() : extendFirstrun(existing.toString('utf8')));
    await fat.write('cmdline.txt', extendCmdline(cmdline.toString('utf8')));
  } else {
    const existing = await fat.read('user-data');
    await fat.write('user-data', existing === undefined ? newUserData() : extendUserData(existing.toString('utf8')));
    if ((await fat.read('meta-data')) === undefined) await fat.write('meta-data', newMetaData(bundle.deviceId));
  }
  return {
    deviceId: bundle.deviceId,
    target: image,
    method: 'debugfs',
    ownership: ids === undefined ? 'first-boot' : 'final',
    ...(ids ? { ids } : {}),
    route,
    ...(machine ? { targetMachine: machine } : {}),
    entries: plan.entries.length,
    warnings,
  };
}
