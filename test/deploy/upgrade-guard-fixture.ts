/**
 * A board's root in a temp directory for provisioning/upgrade-guard
 * (UPGRADE_GUARD_ROOT): /opt/sensor-agent-releases/VERSION trees, the
 * /opt/sensor-agent link, the agent's state dir, release keys, and fake
 * systemd (a restart command that logs, a unit state read from a file).
 *
 * The trees are small and real, but their sensor-agent.mjs is a stand-in for
 * the agent's `verify-release`: it checks a test signature (SHA-256 over a
 * secret from the release-keys file and the JWS's first two parts) and
 * prints the manifest, or exits 2 with {code, detail}. It deliberately does
 * not check the artifact's digest, so the guard's own sha256sum check is what
 * refuses a wrong artifact. node/bin/node is a tiny script running this
 * machine's Node. As root the guard runs as the agent's user, the owner of
 * /var/lib/sensor-agent: `nobody` here.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, chown, lstat, mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { PROVISIONING_DIR } from './repo-paths.js';
import { isRoot, toolEnv } from './tools.js';

export const GUARD = join(PROVISIONING_DIR, 'upgrade-guard');
export const AGENT_USER = 'nobody';
const SECRET = 'release-key-secret-of-the-test';

/** The stand-in agent: `verify-release --manifest F --artifact F --release-keys F --json`. */
const STAND_IN = `import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
const a = process.argv.slice(2);
const get = (n) => a[a.indexOf(n) + 1];
const out = (o, c) => { process.stdout.write(JSON.stringify(o) + '\\n'); process.exit(c); };
if (a[0] !== 'verify-release' || !a.includes('--json')) { console.error('usage: verify-release ... --json'); process.exit(2); }
const jws = readFileSync(get('--manifest'), 'utf8');
readFileSync(get('--artifact'));
const keys = JSON.parse(readFileSync(get('--release-keys'), 'utf8')).keys;
const [h, p, s] = jws.split('.');
if (!keys.some((k) => createHash('sha256').update(k.test_secret + '.' + h + '.' + p).digest('base64url') === s))
  out({ code: 'E_UPGRADE_SIGNATURE', detail: 'the manifest is not signed by a pinned release key' }, 2);
out(JSON.parse(Buffer.from(p, 'base64url').toString('utf8')), 0);
`;

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

export interface Board {
  root: string;
  /** Host paths of board paths. */
  at(boardPath: string): string;
  /** Environment for the guard. */
  env: Record<string, string>;
  /** Lines the fake restart command logged. */
  restarts(): Promise<number>;
  setUnit(active: string, nrestarts: number): Promise<void>;
}

export interface TreeSpec {
  version: string;
  /** Ship node/ (default false: an agent-only release). */
  node?: boolean;
  /** Add sensor-agent.blob + snapshot.env. */
  snapshot?: boolean;
  /** Extra files (relative path -> content). */
  extra?: Record<string, string>;
}

async function put(path: string, content: string, mode = 0o644): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o755 });
  await writeFile(path, content);
  await chmod(path, mode);
}

export const NODE_WRAPPER = `#!/bin/sh\nexec ${process.execPath} "$@"\n`;
export const NODE_WRAPPER_SHA = createHash('sha256').update(NODE_WRAPPER).digest('hex');

/** An agent tree as build-agent writes it (stand-in contents). */
export async function makeTree(dir: string, spec: TreeSpec): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o755 });
  await chmod(dir, 0o755);
  await put(join(dir, 'sensor-agent.mjs'), STAND_IN, 0o755);
  await put(
    join(dir, '.build-info.json'),
    `${JSON.stringify({ format: 2, agent_version: spec.version, arch: 'x64', node: { source: spec.node === false ? 'system' : 'npm' } })}\n`,
  );
  if (spec.node) await put(join(dir, 'node/bin/node'), NODE_WRAPPER, 0o755);
  if (spec.snapshot) {
    await put(join(dir, 'sensor-agent.blob'), 'blob\n');
    await put(join(dir, 'snapshot.env'), 'SENSOR_AGENT_SNAPSHOT=--snapshot-blob=/opt/sensor-agent/sensor-agent.blob\n');
  }
  for (const [rel, content] of Object.entries(spec.extra ?? {})) await put(join(dir, rel), content);
}

export function run(file: string, args: string[], env: Record<string, string> = {}, timeoutMs = 60_000): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(file, args, { env: toolEnv(env), timeout: timeoutMs, maxBuffer: 8 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? Number((err as { code?: unknown }).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** tar -czf of a tree, as `release add` packs one (names relative, ./ first). */
export async function pack(tree: string, out: string, extraArgs: string[] = []): Promise<Buffer> {
  const r = await run('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '-czPf', out, '-C', tree, '.', ...extraArgs]);
  if (r.code !== 0 && !/Removing leading/.test(r.stderr)) throw new Error(`tar: ${r.stderr}`);
  return readFile(out);
}

export interface ManifestSpec {
  version: string;
  artifact: Buffer;
  ships?: boolean;
  binarySha?: string | null;
  /** Override artifact.sha256. */
  sha256?: string;
  /** Sign with another secret (a key the board does not pin). */
  secret?: string;
}

export function manifestJws(m: ManifestSpec): string {
  const manifest = {
    format: 1,
    version: m.version,
    arch: 'x64',
    node: { ships: m.ships ?? false, version: process.versions.node, abi: process.versions.modules, binary_sha256: m.binarySha ?? null },
    gpio: 'omit',
    snapshot: false,
    artifact: { bytes: m.artifact.length, sha256: m.sha256 ?? createHash('sha256').update(m.artifact).digest('hex'), unpacked_bytes: 1000 },
    chunks: { bytes: 61440, count: 1, index_sha256: '0'.repeat(64) },
    created_at: new Date().toISOString(),
  };
  const h = Buffer.from(JSON.stringify({ alg: 'ES256', kid: 'r1', typ: 'sensor-agent-release+jws' })).toString('base64url');
  const p = Buffer.from(JSON.stringify(manifest)).toString('base64url');
  const s = createHash('sha256')
    .update(`${m.secret ?? SECRET}.${h}.${p}`)
    .digest('base64url');
  return `${h}.${p}.${s}`;
}

async function agentIds(): Promise<{ uid: number; gid: number } | undefined> {
  if (!isRoot()) return undefined;
  const r = await run('id', ['-u', AGENT_USER]);
  const g = await run('id', ['-g', AGENT_USER]);
  return { uid: Number(r.stdout.trim()), gid: Number(g.stdout.trim()) };
}

/** Gives a path to the agent's user (as root). */
export async function toAgent(path: string): Promise<void> {
  const ids = await agentIds();
  if (ids) await chown(path, ids.uid, ids.gid);
}

/** A flashed board at 0.1.0 (agent tree with its own node/), plus an old 0.0.9 release lying around. */
export async function makeBoard(work: string, name: string): Promise<Board> {
  const root = join(work, name);
  await mkdir(root, { mode: 0o755 });
  const at = (p: string): string => join(root, p);
  await makeTree(at('/opt/sensor-agent-releases/0.1.0'), { version: '0.1.0', node: true });
  await makeTree(at('/opt/sensor-agent-releases/0.0.9'), { version: '0.0.9', node: true });
  await symlink('sensor-agent-releases/0.1.0', at('/opt/sensor-agent'));
  await put(at('/etc/sensor-agent/release.jwks'), `${JSON.stringify({ keys: [{ kid: 'r1', test_secret: SECRET }] })}\n`);
  await mkdir(at('/var/lib/sensor-agent/upgrade'), { recursive: true, mode: 0o700 });
  await chmod(at('/var/lib/sensor-agent'), 0o700);
  await toAgent(at('/var/lib/sensor-agent'));
  await toAgent(at('/var/lib/sensor-agent/upgrade'));
  await put(at('/fake/unit'), 'ActiveState=active\nNRestarts=0\n');
  await put(at('/fake/restarts'), '');
  for (const d of [root, at('/var'), at('/var/lib'), at('/fake')]) await chmod(d, 0o755);
  const env = {
    UPGRADE_GUARD_ROOT: root,
    UPGRADE_GUARD_RESTART: `echo restart >>${at('/fake/restarts')}`,
    UPGRADE_GUARD_AGENT_STATE: `cat ${at('/fake/unit')}`,
    UPGRADE_GUARD_POLL_S: '0.2',
    UPGRADE_GUARD_BOOT_ID: 'boot-1',
  };
  return {
    root,
    at,
    env,
    restarts: async () => (await readFile(at('/fake/restarts'), 'utf8')).split('\n').filter((l) => l === 'restart').length,
    setUnit: async (active, n) => writeFile(at('/fake/unit'), `ActiveState=${active}\nNRestarts=${n}\n`),
  };
}

export interface Staged {
  version: string;
  jti: string;
  seq: number;
  artifact: Buffer;
}

/** What the agent leaves for the guard: artifact.tar.gz, then staged.json (as the agent's user). */
export async function stage(
  board: Board,
  tree: TreeSpec,
  opts: { deadline?: number; manifest?: Partial<ManifestSpec>; stagedVersion?: string; packArgs?: string[] } = {},
): Promise<Staged> {
  const src = join(board.root, '..', `${board.root.split('/').pop() ?? 'b'}-tree-${tree.version}`);
  await rm(src, { recursive: true, force: true });
  await makeTree(src, tree);
  const artifactFile = board.at('/var/lib/sensor-agent/upgrade/artifact.tar.gz');
  const artifact = await pack(src, artifactFile, opts.packArgs);
  await toAgent(artifactFile);
  const manifest = manifestJws({ version: tree.version, artifact, ships: tree.node ?? false, ...opts.manifest });
  const jti = `jti-${tree.version}-${Math.random().toString(36).slice(2)}`;
  const staged = {
    version: opts.stagedVersion ?? tree.version,
    manifest,
    deadline_s: opts.deadline ?? 300,
    jti,
    seq: 7,
    from: '0.1.0',
  };
  const file = board.at('/var/lib/sensor-agent/upgrade/staged.json');
  await writeFile(file, `${JSON.stringify(staged)}\n`, { mode: 0o600 });
  await toAgent(file);
  return { version: tree.version, jti, seq: 7, artifact };
}

export function runGuard(board: Board, sub: string, env: Record<string, string> = {}, timeoutMs = 60_000): Promise<Ran> {
  return run('sh', [GUARD, sub], { ...board.env, ...env }, timeoutMs);
}

/** Starts the guard in the background (install watches until the trial ends). */
export function startGuard(board: Board, sub: string, env: Record<string, string> = {}): { child: ChildProcess; done: Promise<Ran> } {
  const child = spawn('sh', [GUARD, sub], { env: toolEnv({ ...board.env, ...env }), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<Ran>((resolve) => child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr })));
  return { child, done };
}

/** Where /opt/sensor-agent points (the version), checking it is a complete tree. */
export async function linkedVersion(board: Board): Promise<string> {
  const target = await readlink(board.at('/opt/sensor-agent'));
  const m = /^sensor-agent-releases\/(.+)$/.exec(target);
  if (!m?.[1]) throw new Error(`/opt/sensor-agent -> ${target}: not a release`);
  const dir = board.at(`/opt/sensor-agent-releases/${m[1]}`);
  for (const f of ['sensor-agent.mjs', '.build-info.json', 'node/bin/node']) {
    const st = await lstat(join(dir, f)).catch(() => undefined);
    if (!st?.isFile()) throw new Error(`/opt/sensor-agent -> ${target}: ${f} is missing`);
  }
  const info = JSON.parse(await readFile(join(dir, '.build-info.json'), 'utf8')) as { agent_version: string };
  if (info.agent_version !== m[1]) throw new Error(`${dir} holds ${info.agent_version}`);
  return m[1];
}

export async function exists(path: string): Promise<boolean> {
  return (await lstat(path).catch(() => undefined)) !== undefined;
}

export async function readJson(path: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
}

/** Writes a file into the agent's upgrade dir as the agent would. */
export async function agentWrites(board: Board, name: string, content: string): Promise<void> {
  const file = board.at(`/var/lib/sensor-agent/upgrade/${name}`);
  await writeFile(`${file}.tmp`, content, { mode: 0o600 });
  await toAgent(`${file}.tmp`);
  const { rename } = await import('node:fs/promises');
  await rename(`${file}.tmp`, file);
}

export async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export async function makeWork(): Promise<string> {
  const work = await mkdtemp(join(tmpdir(), 'upgrade-guard-'));
  await chmod(work, 0o755);
  return work;
}
