/**
 * The node-jose patch ships and is required (issue 26): `npm pack` carries patches/ (postinstall is
 * `patch-package`), and a process whose node-jose is not patched refuses to seal or open
 * (E_JOSE_UNPATCHED) instead of running node-jose 2.2.0's own code without a word.
 *
 * The unpatched copy is real: node_modules/node-jose copied to a directory under build/ and the
 * project patch reversed on it with `patch -R`, next to a copy of the compiled protocol/ (so that
 * its `import 'node-jose'` finds the copy; node-jose's own dependencies resolve to the
 * repository's node_modules further up). A child process seals and opens with each protocol/.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { generateEncryptionKey, generateSigningKey, sealClaims, toPublicJwk, type PrivateJwk } from '../../protocol/index.js';
import { REPO_ROOT } from '../deploy/repo-paths.js';

const run = promisify(execFile);
const PATCH = 'patches/node-jose+2.2.0.patch';

/** Seals with the protocol/ at argv[2] and opens argv[3] (a token) with the key in argv[4]; prints what each did. */
const PROBE = `
const [protocolDir, token, keyJson] = process.argv.slice(2);
const p = await import(new URL('index.js', protocolDir).href);
const key = JSON.parse(keyJson);
const out = {};
const signer = await p.generateSigningKey();
try {
  await p.sealClaims({ probe: 1 }, { signer, recipient: p.toPublicJwk(key) });
  out.seal = 'sealed';
} catch (err) {
  out.seal = err.code + ': ' + err.message;
}
try {
  await p.decryptSealed(token, await p.KeyRing.create([key]));
  out.open = 'opened';
} catch (err) {
  out.open = err.code + ': ' + err.message;
}
process.stdout.write(JSON.stringify(out));
`;

describe('node-jose: the patch ships with the package and is required at run time', function () {
  this.timeout(60_000);
  let dir = '';
  let key: PrivateJwk;
  let token = '';

  before(async () => {
    dir = await mkdtemp(join(REPO_ROOT, 'build', 'unpatched-jose-'));
    await cp(join(REPO_ROOT, 'node_modules', 'node-jose'), join(dir, 'node_modules', 'node-jose'), { recursive: true });
    await run('patch', ['-R', '-p1', '--quiet', '-d', dir, '-i', join(REPO_ROOT, PATCH)]);
    await cp(join(REPO_ROOT, 'dist', 'protocol'), join(dir, 'protocol'), { recursive: true });
    await writeFile(join(dir, 'probe.mjs'), PROBE);
    key = await generateEncryptionKey();
    token = await sealClaims({ probe: 0 }, { signer: await generateSigningKey(), recipient: toPublicJwk(key) });
  });

  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function probe(protocolDir: string): Promise<{ seal: string; open: string }> {
    const { stdout } = await run(process.execPath, [join(dir, 'probe.mjs'), pathToFileURL(`${protocolDir}/`).href, token, JSON.stringify(key)], {
      timeout: 20_000,
    });
    return JSON.parse(stdout) as { seal: string; open: string };
  }

  it('npm pack includes patches/node-jose+2.2.0.patch', async () => {
    // --ignore-scripts: `prepare` would rebuild dist/ under the running tests.
    const { stdout } = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: REPO_ROOT, timeout: 60_000 });
    const files = (JSON.parse(stdout) as { files: { path: string }[] }[])[0]?.files.map((f) => f.path) ?? [];
    expect(files).to.include(PATCH);
    expect(files).to.include('dist/protocol/index.js');
  });

  it('the patched node-jose (the control) seals and opens', async () => {
    expect(await probe(join(REPO_ROOT, 'dist', 'protocol'))).to.deep.equal({ seal: 'sealed', open: 'opened' });
  });

  it('an unpatched node-jose: seal and open are refused with E_JOSE_UNPATCHED and how to fix it', async () => {
    const r = await probe(join(dir, 'protocol'));
    for (const what of [r.seal, r.open]) {
      expect(what).to.match(/^E_JOSE_UNPATCHED: node-jose is installed without the project patch/);
      expect(what).to.match(/npx patch-package/);
    }
  });
});
