/**
 * `sensor-agent verify-release` (the bundled agent, as root's installer runs
 * it) and `sensor-agent --version`: a valid release prints its manifest (one
 * line of JSON) and exits 0; a tampered or truncated artifact, a manifest
 * signed by another key, a symlinked manifest or artifact, missing release
 * keys each exit 2 with {"code","detail"} on stdout (--json), or the code on
 * stderr without --json.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { generateSigningKey, toJwkSet, toPublicJwk, type PrivateJwk } from '../../protocol/index.js';
import { AGENT_CLI } from '../helpers/agent-process.js';
import { makeArtifact, makeRelease, type Release } from './upgrade-fixture.js';

const run = promisify(execFile);

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

async function agentCli(args: string[]): Promise<Outcome> {
  try {
    const { stdout, stderr } = await run(process.execPath, [AGENT_CLI, ...args]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

describe('sensor-agent verify-release and --version (bundled agent)', function () {
  this.timeout(60_000);
  let dir: string;
  let key: PrivateJwk;
  let release: Release;
  let keys: string;

  before(async function () {
    dir = await mkdtemp(join(tmpdir(), 'verify-release-'));
    key = await generateSigningKey();
    release = await makeRelease(key, { version: '0.4.0', artifact: await makeArtifact(70 * 1024) });
    keys = join(dir, 'release.jwks');
    await writeFile(keys, JSON.stringify(toJwkSet([toPublicJwk(key)])));
    await writeFile(join(dir, 'manifest.jws'), `${release.jws}\n`);
    await writeFile(join(dir, 'artifact.tar.gz'), release.artifact);
  });

  after(async function () {
    await rm(dir, { recursive: true, force: true });
  });

  const verify = (manifest: string, artifact: string, json = true, releaseKeys?: string): Promise<Outcome> =>
    agentCli([
      'verify-release',
      '--manifest',
      join(dir, manifest),
      '--artifact',
      join(dir, artifact),
      '--release-keys',
      releaseKeys ?? keys,
      ...(json ? ['--json'] : []),
    ]);

  function refusal(o: Outcome): { code: string; detail: string } {
    expect(o.code, o.stderr).to.equal(2);
    const lines = o.stdout.trim().split('\n');
    expect(lines).to.have.length(1);
    return JSON.parse(lines[0] as string) as { code: string; detail: string };
  }

  it('--version prints the agent version', async function () {
    const o = await agentCli(['--version']);
    expect(o.code).to.equal(0);
    expect(o.stdout.trim()).to.equal('0.1.0');
  });

  it('a valid release: exit 0 and the manifest as one line of JSON', async function () {
    const o = await verify('manifest.jws', 'artifact.tar.gz');
    expect(o.code, o.stderr).to.equal(0);
    expect(o.stdout.trim().split('\n')).to.have.length(1);
    expect(JSON.parse(o.stdout)).to.deep.equal(release.manifest);
    const human = await verify('manifest.jws', 'artifact.tar.gz', false);
    expect(human.code).to.equal(0);
    expect(human.stdout).to.match(/release 0\.4\.0 .* is valid/);
  });

  it('a tampered or truncated artifact: exit 2, E_UPGRADE_ARTIFACT', async function () {
    const bad = Buffer.from(release.artifact);
    bad[bad.length - 100] = (bad[bad.length - 100] ?? 0) ^ 1;
    await writeFile(join(dir, 'tampered.tar.gz'), bad);
    const t = refusal(await verify('manifest.jws', 'tampered.tar.gz'));
    expect(t.code).to.equal('E_UPGRADE_ARTIFACT');
    expect(t.detail).to.match(/SHA-256/);
    await writeFile(join(dir, 'short.tar.gz'), release.artifact.subarray(0, 1000));
    const s = refusal(await verify('manifest.jws', 'short.tar.gz'));
    expect(s.code).to.equal('E_UPGRADE_ARTIFACT');
    expect(s.detail).to.match(/1000 bytes; the manifest says/);
  });

  it('signed by a key that is not pinned: exit 2, E_UPGRADE_SIGNATURE; without --json the code on stderr', async function () {
    const other = await makeRelease(await generateSigningKey(), { version: '0.4.0', artifact: release.artifact });
    await writeFile(join(dir, 'other.jws'), other.jws);
    expect(refusal(await verify('other.jws', 'artifact.tar.gz')).code).to.equal('E_UPGRADE_SIGNATURE');
    const human = await verify('other.jws', 'artifact.tar.gz', false);
    expect(human.code).to.equal(2);
    expect(human.stdout).to.equal('');
    expect(human.stderr).to.match(/^sensor-agent: E_UPGRADE_SIGNATURE: /);
  });

  it('a symlinked manifest, artifact or key set is not followed; missing release keys: E_UPGRADE_UNSUPPORTED', async function () {
    await symlink(join(dir, 'manifest.jws'), join(dir, 'link.jws'));
    await symlink(join(dir, 'artifact.tar.gz'), join(dir, 'link.tar.gz'));
    await symlink(keys, join(dir, 'link.jwks'));
    const m = refusal(await verify('link.jws', 'artifact.tar.gz'));
    expect(m).to.deep.include({ code: 'E_UPGRADE_MANIFEST' });
    expect(m.detail).to.match(/symbolic link/);
    const a = refusal(await verify('manifest.jws', 'link.tar.gz'));
    expect(a).to.deep.include({ code: 'E_UPGRADE_ARTIFACT' });
    expect(a.detail).to.match(/symbolic link/);
    expect(refusal(await verify('manifest.jws', 'artifact.tar.gz', true, join(dir, 'link.jwks'))).code).to.equal('E_UPGRADE_UNSUPPORTED');
    expect(refusal(await verify('manifest.jws', 'artifact.tar.gz', true, join(dir, 'absent.jwks'))).code).to.equal('E_UPGRADE_UNSUPPORTED');
  });
});
