/**
 * What an operator asks for (`send ... upgrade --release VERSION`, HTTP
 * `{action: 'upgrade', release: ...}`, a rollout's params) and what a board
 * gets (protocol UpgradeParams: the signed manifest of the release built for
 * its architecture). The server keeps the request (`release`, `arch`,
 * `deadline_s`, `allow_downgrade`, `mirror`) in a rollout and resolves it per
 * device when it seals, so one rollout upgrades a mixed fleet.
 *
 * A device's architecture: the registry's (from its reports' `arch`, and
 * when an upgrade to a release of that arch was applied); for a device whose architecture the
 * registry does not know yet, the request's `arch` (`--arch`), else the
 * release's only build when it has one (a board of another arch refuses it,
 * E_UPGRADE_ARCH, with nothing changed: it checks the signed manifest's arch
 * itself); else refused, E_ARCH_UNKNOWN.
 */
import {
  CodedError,
  isRecord,
  isVersion,
  ProtocolError,
  RELEASE_ARCHES,
  validateParams,
  type ReleaseArch,
  type UpgradeParams,
} from '../../../protocol/index.js';
import type { DeviceRecord, ReleaseRecord } from '../../storage/records.js';
import type { Storage } from '../../storage/types.js';

/** An upgrade as the operator asks for it. */
export interface UpgradeRequest {
  release: string;
  /** The architecture of devices whose architecture the registry does not know. */
  arch?: ReleaseArch;
  deadline_s?: number;
  allow_downgrade?: boolean;
  mirror?: string;
}

const KNOWN = ['release', 'arch', 'deadline_s', 'allow_downgrade', 'mirror'];
const PLACEHOLDER_JWS = 'aaaaaaaaaaaaaaaa.bbbbbbbb.cccccccc';

/** Whether upgrade params are a request by release (rather than a manifest given as is). */
export function isUpgradeRequest(params: unknown): params is Record<string, unknown> & { release: unknown } {
  return isRecord(params) && params.release !== undefined;
}

/** Checks an upgrade request (E_PARAMS): a known member set, a version, an arch, and what protocol checks of the rest. */
export function checkUpgradeRequest(params: unknown): UpgradeRequest {
  if (!isRecord(params)) throw new ProtocolError('E_PARAMS', 'params must be an object');
  for (const k of Object.keys(params))
    if (!KNOWN.includes(k)) throw new ProtocolError('E_PARAMS', `upgrade: ${k} is not known (release, arch, deadline_s, allow_downgrade, mirror)`);
  if (!isVersion(params.release)) throw new ProtocolError('E_PARAMS', `upgrade: release ${JSON.stringify(params.release)} must be a version x.y.z[-pre]`);
  if (params.arch !== undefined && !(RELEASE_ARCHES as readonly unknown[]).includes(params.arch))
    throw new ProtocolError('E_PARAMS', `upgrade: arch must be one of ${RELEASE_ARCHES.join(', ')}`);
  const { release, arch, ...rest } = params;
  // deadline_s, allow_downgrade, mirror: as the board will check them.
  const checked = validateParams('upgrade', { ...rest, manifest: PLACEHOLDER_JWS });
  return {
    release,
    ...(arch !== undefined ? { arch: arch as ReleaseArch } : {}),
    ...(checked.deadline_s !== undefined ? { deadline_s: checked.deadline_s } : {}),
    ...(checked.allow_downgrade !== undefined ? { allow_downgrade: checked.allow_downgrade } : {}),
    ...(checked.mirror !== undefined ? { mirror: checked.mirror } : {}),
  };
}

/** Refuses (E_NO_RELEASE) a request for a version the server has no build of (for `arch`, when named). */
export async function checkReleaseExists(storage: Storage, req: UpgradeRequest): Promise<ReleaseRecord[]> {
  const builds = await storage.releases.list({ version: req.release });
  if (builds.length === 0) throw new CodedError('E_NO_RELEASE', `no release ${req.release}; add it with: provision-server release add TREE`);
  if (req.arch !== undefined && !builds.some((b) => b.arch === req.arch))
    throw new CodedError('E_NO_RELEASE', `release ${req.release} has no ${req.arch} build (it has: ${builds.map((b) => b.arch).join(', ')})`);
  return builds;
}

/**
 * The params a device gets for an upgrade request: the manifest of the
 * release built for its architecture. Refuses E_ARCH_UNKNOWN (no arch known
 * nor named) or E_NO_RELEASE (no build for that arch).
 */
export async function resolveUpgrade(storage: Storage, device: DeviceRecord, raw: unknown): Promise<{ params: UpgradeParams; release: ReleaseRecord }> {
  const req = checkUpgradeRequest(raw);
  const builds = await checkReleaseExists(storage, req);
  const arch = device.arch ?? req.arch ?? (builds.length === 1 ? builds[0]?.arch : undefined);
  if (arch === undefined)
    throw new CodedError(
      'E_ARCH_UNKNOWN',
      `the architecture of ${device.id} is not known yet (its reports name it once it runs an agent that can upgrade) and release ${req.release} has builds for ${builds.map((b) => b.arch).join(', ')}: name it with --arch (${RELEASE_ARCHES.join(', ')})`,
    );
  const release = builds.find((b) => b.arch === arch);
  if (!release)
    throw new CodedError('E_NO_RELEASE', `release ${req.release} has no ${arch} build for ${device.id} (it has: ${builds.map((b) => b.arch).join(', ')})`);
  const params: UpgradeParams = {
    manifest: release.manifest,
    ...(req.deadline_s !== undefined ? { deadline_s: req.deadline_s } : {}),
    ...(req.allow_downgrade !== undefined ? { allow_downgrade: req.allow_downgrade } : {}),
    ...(req.mirror !== undefined ? { mirror: req.mirror } : {}),
  };
  return { params, release };
}

/** The artifact SHA-256 a signed manifest names (unverified: only to find the stored release it is). */
export function manifestArtifactSha256(jws: string): string | undefined {
  try {
    const payload = JSON.parse(Buffer.from(jws.split('.')[1] ?? '', 'base64url').toString('utf8')) as unknown;
    if (isRecord(payload) && isRecord(payload.artifact) && typeof payload.artifact.sha256 === 'string') return payload.artifact.sha256;
  } catch {
    /* not JSON */
  }
  return undefined;
}
