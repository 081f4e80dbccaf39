/**
 * Boots a Pi OS-shaped image in systemd-nspawn, arm64 code running through
 * qemu-user (binfmt_misc). The container shares the host's network (no
 * --private-network), so the board reaches the host's broker on loopback.
 *
 * - The image's ext4 root is loop-mounted on the host as the container's
 *   directory; the FAT boot partition's files are bound at /boot/firmware
 *   (what Pi OS's fstab mounts there; systemd in a container skips fstab's
 *   device entries), copied in and out of the partition with mtools around
 *   each boot (see mountImage).
 * - `--register=no --keep-unit`: no machined, no new scope (the host may run
 *   no systemd at all).
 * - The kernel command line: in a container systemd reads it from its own
 *   arguments, so each boot passes cmdline.txt's `systemd.*` words to the
 *   container's init, as the Pi's firmware hands cmdline.txt to the kernel
 *   (that is how Bookworm's firstrun.sh runs through `systemd.run=`).
 * - A reboot inside ends systemd-nspawn with status 133: the harness boots
 *   the image again, like the Pi's firmware would.
 * - Commands run inside through nsenter into the container's PID 1
 *   namespaces (machinectl/systemd-run -M need a registered machine).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { appendFile, mkdir, readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { toolEnv } from '../deploy/tools.js';
import { BoardSetupError } from './host-tools.js';
import { BOOT_PART, ROOT_PART } from './pi-image.js';

const execFileP = promisify(execFile);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const CONTAINER_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** systemd-nspawn's exit status when the container asked for a reboot. */
const NSPAWN_REBOOT = 133;

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

export interface MountedImage {
  image: string;
  /** The ext4 root, loop-mounted. */
  root: string;
  /** The FAT boot partition's files, copied out with mtools (bound at /boot/firmware). */
  boot: string;
  /** Writes what the board changed under `boot` back into the FAT partition. */
  syncBoot(): Promise<void>;
  unmount(): Promise<void>;
}

function mtools(cmd: string, args: string[]): Promise<{ stdout: string }> {
  return execFileP(cmd, args, { env: toolEnv({ MTOOLS_SKIP_CHECK: '1' }), maxBuffer: 64 * 1024 * 1024 });
}

/** Relative path -> content (files) or null (directories), recursively. */
async function snapshot(dir: string, prefix = ''): Promise<Map<string, Buffer | null>> {
  const out = new Map<string, Buffer | null>();
  for (const e of await readdir(join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix === '' ? e.name : `${prefix}/${e.name}`;
    if (e.isDirectory()) {
      out.set(rel, null);
      for (const [k, v] of await snapshot(dir, rel)) out.set(k, v);
    } else if (e.isFile()) {
      out.set(rel, await readFile(join(dir, rel)));
    }
  }
  return out;
}

/**
 * The image's root loop-mounted as ext4. The FAT boot partition is not
 * mounted (kernels without vfat exist, this CI's among them): its files are
 * copied out with mtools before a boot and what the board changed is written
 * back after it, so between boots the FAT partition holds the truth, as on
 * an SD card.
 */
export async function mountImage(image: string, at: string): Promise<MountedImage> {
  const root = join(at, 'root');
  const boot = join(at, 'boot');
  await mkdir(root, { recursive: true });
  await mkdir(boot, { recursive: true });
  const env = toolEnv();
  const fat = `${image}@@${BOOT_PART.offset}`;
  await execFileP('mount', ['-o', `loop,offset=${ROOT_PART.offset},sizelimit=${ROOT_PART.size}`, '-t', 'ext4', image, root], { env });
  await mtools('mcopy', ['-s', '-n', '-m', '-i', fat, '::/*', boot]);
  // FAT has no modes: Pi OS mounts it with vfat's defaults (everything rwxr-xr-x), so firstrun.sh is executable.
  await execFileP('chmod', ['-R', '0755', boot], { env });
  let synced = await snapshot(boot);
  const syncBoot = async (): Promise<void> => {
    const now = await snapshot(boot);
    const gone = [...synced.keys()].filter((k) => !now.has(k)).sort((a, b) => b.length - a.length);
    for (const rel of gone) {
      if (synced.get(rel) === null) await mtools('mrd', ['-i', fat, `::/${rel}`]);
      else await mtools('mdel', ['-i', fat, `::/${rel}`]);
    }
    for (const [rel, content] of [...now].sort(([a], [b]) => a.length - b.length)) {
      const was = synced.get(rel);
      if (content === null) {
        if (was !== null || !synced.has(rel)) await mtools('mmd', ['-i', fat, `::/${rel}`]);
      } else if (was === undefined || was === null || !was.equals(content)) {
        await mtools('mcopy', ['-o', '-i', fat, join(boot, rel), `::/${rel}`]);
      }
    }
    synced = now;
  };
  return {
    image,
    root,
    boot,
    syncBoot,
    async unmount() {
      await syncBoot();
      // the loop device goes with the umount (mount -o loop sets autoclear)
      await execFileP('umount', [root], { env }).catch(() => execFileP('umount', ['-l', root], { env }));
    },
  };
}

/** A file on the image's FAT partition, read with mtools (what the Pi's firmware reads). */
export async function readFatFile(image: string, name: string): Promise<string> {
  return (await mtools('mtype', ['-i', `${image}@@${BOOT_PART.offset}`, `::/${name}`])).stdout;
}

/** cmdline.txt's systemd.* words: what the Pi's kernel would pass on to systemd. */
export function systemdArgsOf(cmdline: string): string[] {
  return cmdline
    .trim()
    .split(/\s+/)
    .filter((w) => w.startsWith('systemd.'));
}

/**
 * systemd-nspawn keeps per-machine state under /run/systemd/nspawn and
 * refuses to clean it up unless it is on a tmpfs ("Attempted to remove disk
 * file system ..."): hosts without systemd as PID 1 may have /run on disk.
 */
async function ensureNspawnRuntimeDir(): Promise<void> {
  const dir = '/run/systemd/nspawn';
  await mkdir(dir, { recursive: true });
  const { stdout } = await execFileP('findmnt', ['-n', '-o', 'FSTYPE', '-T', dir], { env: toolEnv() });
  if (stdout.trim() !== 'tmpfs') await execFileP('mount', ['-t', 'tmpfs', '-o', 'mode=0755', 'tmpfs', dir], { env: toolEnv() });
}

export interface BoardOptions {
  /** Machine name (the container's hostname unless /etc/hostname says otherwise). */
  name: string;
  mounted: MountedImage;
  /** Everything the container prints on its console, boot by boot. */
  consoleLog: string;
  log: (s: string) => void;
}

interface Boot {
  n: number;
  child: ChildProcess;
  exited: Promise<number>;
  /** exited, then the boot partition written back (and, on a reboot, the next boot started). */
  settled: Promise<void>;
  startedAt: number;
  systemdArgs: string[];
}

export class NspawnBoard {
  private current: Boot | undefined;
  private boots = 0;
  private stopping = false;
  /** Every boot's exit status of systemd-nspawn (133 = reboot). */
  readonly exits: number[] = [];

  constructor(private readonly options: BoardOptions) {}

  get bootCount(): number {
    return this.boots;
  }

  get bootStartedAt(): number {
    return this.current?.startedAt ?? Number.NaN;
  }

  /** Boots the image (again after a reboot, until stop()). */
  async boot(): Promise<void> {
    if (this.current !== undefined) throw new BoardSetupError('E_BOARD_BOOT', 'the board is already running');
    await ensureNspawnRuntimeDir();
    this.stopping = false;
    await this.startOnce();
  }

  private async startOnce(): Promise<void> {
    const cmdline = await readFatFile(this.options.mounted.image, 'cmdline.txt');
    const systemdArgs = systemdArgsOf(cmdline);
    this.boots += 1;
    const n = this.boots;
    const args = [
      '--quiet',
      '--register=no',
      '--keep-unit',
      `--machine=${this.options.name}`,
      `--directory=${this.options.mounted.root}`,
      `--bind=${this.options.mounted.boot}:/boot/firmware`,
      '--console=pipe',
      '--boot',
      '--',
      ...systemdArgs,
    ];
    await appendFile(this.options.consoleLog, `\n===== boot ${n}: systemd-nspawn ${args.join(' ')}\n`);
    this.options.log(`boot ${n}${systemdArgs.length > 0 ? ` (kernel command line: ${systemdArgs.join(' ')})` : ''}`);
    const child = spawn('systemd-nspawn', args, { env: toolEnv({ SYSTEMD_LOG_COLOR: '0' }), stdio: ['pipe', 'pipe', 'pipe'] });
    const sink = (b: Buffer): void => {
      void appendFile(this.options.consoleLog, b);
    };
    child.stdout.on('data', sink);
    child.stderr.on('data', sink);
    const exited = new Promise<number>((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : 255))));
    const boot: Boot = { n, child, exited, settled: Promise.resolve(), startedAt: performance.now(), systemdArgs };
    this.current = boot;
    boot.settled = exited.then(async (code) => {
      this.exits.push(code);
      await appendFile(this.options.consoleLog, `\n===== boot ${n}: systemd-nspawn exited ${code}\n`);
      if (this.current !== boot) return;
      this.current = undefined;
      await this.options.mounted.syncBoot();
      if (code === NSPAWN_REBOOT && !this.stopping) {
        this.options.log(`boot ${n} ended in a reboot`);
        await this.startOnce();
      }
    });
  }

  /** The container's PID 1 as the host sees it. */
  private async pid1(): Promise<number | undefined> {
    const nspawnPid = this.current?.child.pid;
    if (nspawnPid === undefined) return undefined;
    const parents = new Map<number, number>();
    const inner = new Set<number>();
    for (const name of await readdir('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      const status = await readFile(`/proc/${name}/status`, 'utf8').catch(() => '');
      const ppid = Number(/^PPid:\s+(\d+)/m.exec(status)?.[1] ?? 0);
      parents.set(Number(name), ppid);
      const nspid = /^NSpid:\s+([\d\s]+)$/m.exec(status)?.[1]?.trim().split(/\s+/) ?? [];
      if (nspid.length >= 2 && nspid[nspid.length - 1] === '1') inner.add(Number(name));
    }
    for (const pid of inner) {
      for (let p: number | undefined = pid, hops = 0; p !== undefined && p > 1 && hops < 8; p = parents.get(p), hops++) {
        if (p === nspawnPid) return pid;
      }
    }
    return undefined;
  }

  /** Runs a command inside the running container (as root, the container's PATH). */
  async exec(argv: string[], options: { timeoutMs?: number; input?: string } = {}): Promise<Ran> {
    const pid = await this.pid1();
    if (pid === undefined) throw new BoardSetupError('E_BOARD_EXEC', 'the board is not running');
    const p = execFileP(
      'nsenter',
      [
        '--target',
        String(pid),
        '--mount',
        '--uts',
        '--ipc',
        '--pid',
        '--root',
        '--wd',
        '--',
        '/usr/bin/env',
        '-i',
        `PATH=${CONTAINER_PATH}`,
        'LANG=C.UTF-8',
        'SYSTEMD_COLORS=0',
        'SYSTEMD_PAGER=',
        ...argv,
      ],
      {
        env: toolEnv(),
        timeout: options.timeoutMs ?? 120_000,
        maxBuffer: 64 * 1024 * 1024,
      },
    );
    if (options.input !== undefined) p.child.stdin?.end(options.input);
    try {
      const { stdout, stderr } = await p;
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code?: unknown; stdout?: string; stderr?: string; killed?: boolean };
      if (typeof e.code !== 'number') {
        if (e.killed === true) return { code: 124, stdout: e.stdout ?? '', stderr: `${e.stderr ?? ''}\n(timed out: ${argv.join(' ')})` };
        throw err;
      }
      return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
    }
  }

  /** exec that must succeed; returns stdout. */
  async sh(script: string, timeoutMs?: number): Promise<string> {
    const r = await this.exec(['/bin/sh', '-c', script], { timeoutMs });
    if (r.code !== 0) throw new BoardSetupError('E_BOARD_EXEC', `on the board: '${script}' exited ${r.code}:\n${r.stdout}${r.stderr}`);
    return r.stdout;
  }

  /**
   * Waits for boot number `boot` (or later) to finish starting up:
   * `systemctl is-system-running --wait` says running or degraded.
   */
  async waitBooted(boot: number, timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.boots >= boot && this.current !== undefined) {
        const r = await this.exec(['systemctl', 'is-system-running', '--wait'], { timeoutMs: Math.max(1000, deadline - Date.now()) }).catch(() => undefined);
        const state = r?.stdout.trim() ?? '';
        if (state === 'running' || state === 'degraded') return state;
      }
      if (Date.now() > deadline)
        throw new BoardSetupError(
          'E_BOARD_BOOT',
          `boot ${boot} did not finish starting up in ${timeoutMs / 1000} s (boots so far: ${this.boots}, nspawn exits: ${this.exits.join(', ') || 'none'})`,
        );
      await sleep(500);
    }
  }

  /** Asks the board to reboot and waits for the next boot to finish starting up. */
  async reboot(timeoutMs: number): Promise<void> {
    const next = this.boots + 1;
    await this.exec(['systemctl', 'reboot'], { timeoutMs: 30_000 });
    await this.waitBooted(next, timeoutMs);
  }

  /** Powers the board off (systemctl poweroff; SIGKILL to nspawn after `timeoutMs`). */
  async stop(timeoutMs = 120_000): Promise<number | undefined> {
    this.stopping = true;
    const boot = this.current;
    if (boot === undefined) return undefined;
    await this.exec(['systemctl', 'poweroff'], { timeoutMs: 30_000 }).catch(() => undefined);
    const timer = setTimeout(() => boot.child.kill('SIGKILL'), timeoutMs);
    const code = await boot.exited;
    clearTimeout(timer);
    await boot.settled;
    return code;
  }

  /**
   * A power cut: SIGKILL of the container's PID 1 from the host, so the
   * kernel kills every process of the board at once (no shutdown, no unit
   * stopped, nothing synced by the board). Resolves once systemd-nspawn has
   * exited and the boot partition is written back; boot() starts it again.
   * (The host's page cache keeps what the board wrote: this models SIGKILL of
   * everything, not lost writes.)
   */
  async powerCut(): Promise<number> {
    const boot = this.current;
    if (boot === undefined) throw new BoardSetupError('E_BOARD_EXEC', 'the board is not running');
    this.stopping = true;
    const pid = await this.pid1();
    if (pid === undefined) throw new BoardSetupError('E_BOARD_EXEC', 'the board has no PID 1 to kill');
    process.kill(pid, 'SIGKILL');
    const timer = setTimeout(() => boot.child.kill('SIGKILL'), 30_000);
    const code = await boot.exited;
    clearTimeout(timer);
    await boot.settled;
    this.options.log(`boot ${boot.n}: power cut (SIGKILL of the container's PID ${pid}; systemd-nspawn exited ${code})`);
    return code;
  }

  /** For `after` hooks: whatever state it is in, the container is gone when this resolves. */
  async kill(): Promise<void> {
    this.stopping = true;
    const boot = this.current;
    if (boot === undefined) return;
    boot.child.kill('SIGTERM');
    const timer = setTimeout(() => boot.child.kill('SIGKILL'), 60_000);
    await boot.exited;
    clearTimeout(timer);
    await boot.settled.catch(() => undefined);
  }

  /** The running nspawn process has exited (e.g. poweroff from inside). */
  running(): boolean {
    return this.current !== undefined;
  }

  exitedPromise(): Promise<number> | undefined {
    return this.current?.exited;
  }
}

export { once };
