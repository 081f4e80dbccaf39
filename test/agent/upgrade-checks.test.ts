/**
 * `upgrade` refusals before anything changes (in process, over aedes): a
 * manifest signed by a key that is not pinned, the wrong architecture, a Node
 * ABI the board lacks (release without its own Node), an older version, no
 * release keys, no installer, too little free space (a small tmpfs as the
 * install root). Each is a `rejected` ack with its code, and the board's
 * files are as before (directory listing; state.json but for the refusal's
 * record). The version already running is `applied` at once.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { bufferedLogger } from '../../lib/log.js';
import { generateSigningKey, type PrivateJwk } from '../../protocol/index.js';
import type { AgentState } from '../../agent/store/state.js';
import { NO_TMPFS, skipBecause } from '../helpers/skip.js';
import { addSuiteDevice, startSuiteAgent, useAedesSuite, type DeviceFiles } from './agent-fixture.js';
import { equipBoard, listing, makeArtifact, makeRelease, type Release } from './upgrade-fixture.js';

const run = promisify(execFile);

/** The board's files, but for what the agent writes on its own (its state, checked apart; the next will sealed ahead). */
async function files(dir: string): Promise<string[]> {
  return (await listing(dir)).filter((l) => !/^state\/(state\.json|next-will\.json|selftest\.json|\.[^/]+\.tmp-[0-9a-f]+) /.test(l));
}

/** state.json without the refusal's record (and the write time). */
async function stateWithout(f: DeviceFiles, jti: string): Promise<Partial<AgentState>> {
  const s = JSON.parse(await readFile(join(f.stateDir, 'state.json'), 'utf8')) as AgentState;
  return { ...s, recent: s.recent.filter((r) => r.jti !== jti), updated_at: 0 };
}

describe('agent upgrade: refused before anything changes (aedes, in process)', function () {
  this.timeout(60_000);
  const logs = bufferedLogger('debug');
  const suite = useAedesSuite(logs);
  let releaseKey: PrivateJwk;
  let artifact: Buffer;

  before(async function () {
    releaseKey = await generateSigningKey();
    artifact = await makeArtifact(100 * 1024);
  });

  async function board(id: string, installRoot = 'opt'): Promise<DeviceFiles> {
    const f = await addSuiteDevice(suite, id, { extra: { upgrade: { installer_path: 'upgrade-guard', install_root: installRoot } } });
    await equipBoard(f, [releaseKey]);
    await startSuiteAgent(suite, { configPath: f.configPath, log: logs.logger });
    expect((await suite.server.command(id, 'request')).claims.status).to.equal('applied');
    // Let the writes that follow a connect and the request settle (the next will sealed ahead, twice).
    await new Promise((r) => setTimeout(r, 2500));
    return f;
  }

  /** Sends the upgrade, expects `rejected` with `code`, and the board unchanged. */
  async function refused(id: string, f: DeviceFiles, rel: Release, code: string, params: Record<string, unknown> = {}): Promise<string> {
    const before = await files(f.dir);
    const stateBefore = await stateWithout(f, '-');
    const ack = await suite.server.command(id, 'upgrade', { manifest: rel.jws, ...params });
    expect(ack.claims.status, ack.claims.detail).to.equal('rejected');
    expect(ack.claims.code, ack.claims.detail).to.equal(code);
    expect(await files(f.dir)).to.deep.equal(before);
    expect(await stateWithout(f, ack.claims.ref)).to.deep.equal(stateBefore);
    return ack.claims.detail;
  }

  it('not pinned, wrong arch, wrong Node ABI, older, no release keys, no installer: rejected, nothing changed; the same version: applied at once', async function () {
    const id = 'up-refuse';
    const f = await board(id);
    const other = await generateSigningKey();
    const d1 = await refused(id, f, await makeRelease(other, { version: '0.2.0', artifact }), 'E_UPGRADE_SIGNATURE');
    expect(d1).to.match(/not signed by a pinned release key/);
    const wrongArch = process.arch === 'arm64' ? 'x64' : 'arm64';
    const d2 = await refused(id, f, await makeRelease(releaseKey, { version: '0.2.0', artifact, arch: wrongArch }), 'E_UPGRADE_ARCH');
    expect(d2).to.include(`is for ${wrongArch}`);
    const d3 = await refused(id, f, await makeRelease(releaseKey, { version: '0.2.0', artifact, node: { ships: false, abi: '1' } }), 'E_UPGRADE_NODE');
    expect(d3).to.match(/needs Node ABI 1/);
    const d4 = await refused(id, f, await makeRelease(releaseKey, { version: '0.0.9', artifact }), 'E_UPGRADE_DOWNGRADE');
    expect(d4).to.match(/older than the running 0\.1\.0/);
    // A release on the board's own Node (same ABI) passes the Node check: refused only for being older.
    await refused(id, f, await makeRelease(releaseKey, { version: '0.1.0-rc.1', artifact, node: { ships: false } }), 'E_UPGRADE_DOWNGRADE');

    const good = await makeRelease(releaseKey, { version: '0.2.0', artifact });
    await rename(join(f.dir, 'release.jwks'), join(f.dir, 'release.jwks.away'));
    const d5 = await refused(id, f, good, 'E_UPGRADE_UNSUPPORTED');
    expect(d5).to.match(/no release keys pinned/);
    await rename(join(f.dir, 'release.jwks.away'), join(f.dir, 'release.jwks'));
    await rename(join(f.dir, 'upgrade-guard'), join(f.dir, 'upgrade-guard.away'));
    const d6 = await refused(id, f, good, 'E_UPGRADE_UNSUPPORTED');
    expect(d6).to.match(/no upgrade installer/);
    await rename(join(f.dir, 'upgrade-guard.away'), join(f.dir, 'upgrade-guard'));

    const before = await files(f.dir);
    const same = await suite.server.command(id, 'upgrade', { manifest: (await makeRelease(releaseKey, { version: '0.1.0', artifact })).jws });
    expect(same.claims).to.include({ status: 'applied', code: 'OK', detail: 'already running 0.1.0' });
    expect(same.claims.result).to.deep.equal({ version: '0.1.0' });
    expect(await files(f.dir)).to.deep.equal(before);
    const st = JSON.parse(await readFile(join(f.stateDir, 'state.json'), 'utf8')) as AgentState;
    expect(st.pending_upgrade).to.equal(null);
  });

  describe('free space', function () {
    let mnt: string | undefined;
    let mounted = false;
    before(async function () {
      mnt = await mkdtemp(join(tmpdir(), 'up-space-'));
      try {
        await run('mount', ['-t', 'tmpfs', '-o', 'size=8m,mode=0755', 'tmpfs', mnt]);
        mounted = true;
      } catch (err) {
        if (process.env.REQUIRE_TMPFS === '1') throw err;
        skipBecause(this, NO_TMPFS);
      }
    });
    after(async function () {
      if (mounted && mnt) await run('umount', [mnt]).catch(() => undefined);
      if (mnt) await rm(mnt, { recursive: true, force: true });
    });

    it('artifact + unpacked + 16 MiB not free where releases unpack (an 8 MiB tmpfs): rejected E_UPGRADE_SPACE, nothing changed', async function () {
      const id = 'up-space';
      const f = await board(id, mnt as string);
      const d = await refused(id, f, await makeRelease(releaseKey, { version: '0.2.0', artifact, unpackedBytes: 1024 * 1024 }), 'E_UPGRADE_SPACE');
      expect(d).to.include(`${mnt as string} (install) has`);
    });
  });
});
