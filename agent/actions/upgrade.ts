/**
 * `upgrade`: install a signed agent release (docs/AGENT.md, Upgrades). Every
 * check runs before anything changes (agent/upgrade/checks.ts), each refusal
 * a `rejected` ack with its code. Accepted, a `pending_upgrade` record is
 * saved with the command, the command PUBACKed, and the download runs in the
 * background (agent/upgrade/manager.ts); the ack comes later (`ack:
 * 'action'`): `failed` when the download fails, else whatever root's
 * installer decides (applied, rolled_back, failed), read from its
 * result.json. The release already running is `applied` at once.
 */
import { DEFAULT_UPGRADE_DEADLINE_SECONDS, type CommandClaims } from '../../protocol/index.js';
import type { ActionContext, ActionDescriptor } from './descriptor.js';
import { ActionRefused, applied, type Outcome } from './outcome.js';
import type { PendingUpgrade } from '../store/state.js';
import { agentVersion } from '../version.js';
import { checkInstaller, checkPlatform, checkSpace, checkVersion, loadReleaseKeys, UpgradeRefusal, verifyManifest } from '../upgrade/checks.js';
import { readSafeFile, upgradePaths } from '../upgrade/files.js';

export const upgradeAction: ActionDescriptor<'upgrade'> = {
  action: 'upgrade',
  needsProvisioned: true,
  runsHook: false,
  ack: 'action',
  retiresPreviousKey: true,
  savesFailedChange: false,
  inProgress: (state, jti) => state.pending_upgrade?.jti === jti,
  apply: applyUpgrade,
};

export async function applyUpgrade(ctx: ActionContext, claims: CommandClaims<'upgrade'>): Promise<Outcome> {
  try {
    return await decide(ctx, claims);
  } catch (err) {
    if (err instanceof UpgradeRefusal) throw new ActionRefused(err.code, err.message);
    throw err;
  }
}

async function decide(ctx: ActionContext, claims: CommandClaims<'upgrade'>): Promise<Outcome> {
  const { rt } = ctx;
  const p = claims.params;
  const cfg = rt.config;
  const keys = await loadReleaseKeys(cfg.release_keys);
  if (!keys)
    throw new UpgradeRefusal(
      'E_UPGRADE_UNSUPPORTED',
      `no release keys pinned on this board (${cfg.release_keys}); reflash with a bundle that has release.jwks`,
    );
  await checkInstaller(cfg.upgrade.installer_path);
  const m = await verifyManifest(p.manifest, keys);
  const running = agentVersion();
  const paths = upgradePaths(cfg.upgrade.dir);
  const pending = rt.store.state.pending_upgrade;
  if (pending) throw new UpgradeRefusal('E_UPGRADE_BUSY', `an upgrade to ${pending.version} is in progress (${pending.phase}, seq ${pending.seq})`);
  for (const f of [paths.staged, paths.trial, paths.result]) {
    const found = await readSafeFile(f, 16 * 1024).catch(() => Buffer.alloc(0));
    if (found !== undefined) throw new UpgradeRefusal('E_UPGRADE_BUSY', `the installer has an upgrade in hand (${f} exists)`);
  }
  checkPlatform(m);
  const cmp = checkVersion(m, running, p.allow_downgrade === true);
  if (cmp === 0) {
    const detail = `already running ${running}`;
    return applied(detail, {
      result: { version: running },
      afterAck: async () => {
        const token = await rt.sealAck({ ref: claims.jti, seq: claims.seq, status: 'applied', code: 'OK', detail, result: { version: running } });
        rt.publishAck(token, { ref: claims.jti, status: 'applied', code: 'OK' });
      },
    });
  }
  await checkSpace(m, cfg.upgrade.dir, cfg.upgrade.install_root);
  const record: PendingUpgrade = {
    jti: claims.jti,
    seq: claims.seq,
    version: m.version,
    manifest: p.manifest,
    deadline_s: p.deadline_s ?? DEFAULT_UPGRADE_DEADLINE_SECONDS,
    phase: 'download',
    from: running,
    ...(p.mirror !== undefined ? { mirror: p.mirror } : {}),
  };
  return applied(`accepted: downloading ${m.version} (${m.artifact.bytes} bytes, ${m.chunks.count} chunks) to replace ${running}`, {
    mutate: (d) => {
      d.pending_upgrade = record;
    },
    afterAck: () => {
      ctx.beginUpgrade(record);
      return Promise.resolve();
    },
  });
}
