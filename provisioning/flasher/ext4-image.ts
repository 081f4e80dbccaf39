/**
 * An ext4 file system inside a disk image, read and written with debugfs
 * (e2fsprogs) at a byte offset (`image?offset=N`): no mounting, no root
 * privileges, and owners and modes set explicitly on every inode.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FlashError } from './errors.js';
import type { AgentIds, InstallPlan } from './plan.js';
import { resolveOwner } from './plan.js';
import { requireTool, runTool } from './run-tool.js';

export type InodeType = 'dir' | 'file' | 'symlink' | 'other';

const BANNER = /^debugfs [0-9.]+ \(.*\)$/;

function quote(path: string): string {
  if (/["\\\n]/.test(path))
    throw new FlashError('E_TARGET', `cannot pass ${JSON.stringify(path)} to debugfs (quotes, backslashes and newlines are not supported)`);
  return `"${path}"`;
}

export class Ext4Image {
  private readonly debugfs: string;

  constructor(
    readonly image: string,
    readonly offset: number,
  ) {
    this.debugfs = requireTool('debugfs', 'e2fsprogs');
  }

  private get spec(): string {
    return `${this.image}?offset=${this.offset}`;
  }

  /**
   * Runs commands in one debugfs session; returns each command's output.
   * With `strict`, anything on stderr besides the banner is an error.
   */
  async run(commands: readonly string[], options: { write: boolean; strict: boolean }): Promise<{ outputs: string[]; errors: string[] }> {
    const dir = await mkdtemp(join(tmpdir(), 'flash-debugfs-'));
    try {
      const file = join(dir, 'commands');
      await writeFile(file, `${commands.join('\n')}\n`, { mode: 0o600 });
      const r = await runTool(this.debugfs, [...(options.write ? ['-w'] : []), '-f', file, this.spec]);
      const errors = r.stderr.split('\n').filter((l) => l.trim() !== '' && !BANNER.test(l.trim()));
      if (r.code !== 0 || (options.strict && errors.length > 0)) {
        throw new FlashError('E_TOOL', `debugfs on ${this.spec} failed: ${errors.slice(0, 10).join('; ') || `exit ${r.code}`}`);
      }
      const outputs = r.stdout.split(/^debugfs: .*$/m).slice(1);
      if (outputs.length !== commands.length) {
        throw new FlashError('E_TOOL', `debugfs on ${this.spec}: expected output for ${commands.length} commands, got ${outputs.length}`);
      }
      return { outputs, errors };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Refuses a file system whose journal needs recovery (mounted, or not cleanly unmounted). */
  async checkWritable(): Promise<void> {
    const { outputs } = await this.run(['features'], { write: false, strict: true });
    const features = outputs[0] ?? '';
    if (!/Filesystem features:/.test(features)) throw new FlashError('E_IMAGE', `no ext4 file system at offset ${this.offset} of ${this.image}`);
    if (/\bneeds_recovery\b/.test(features)) {
      throw new FlashError(
        'E_IMAGE',
        `the root file system in ${this.image} needs journal recovery (it is mounted, or was not unmounted cleanly): unmount it, or run e2fsck on it, and try again`,
      );
    }
  }

  /** The type of each path, or undefined where it does not exist. */
  async types(paths: readonly string[]): Promise<Map<string, InodeType | undefined>> {
    const result = new Map<string, InodeType | undefined>();
    if (paths.length === 0) return result;
    const { outputs } = await this.run(
      paths.map((p) => `stat ${quote(p)}`),
      { write: false, strict: false },
    );
    paths.forEach((p, i) => {
      const m = /Type: (\w+)/.exec(outputs[i] ?? '');
      const t = m?.[1];
      result.set(p, t === undefined ? undefined : t === 'directory' ? 'dir' : t === 'regular' ? 'file' : t === 'symlink' ? 'symlink' : 'other');
    });
    return result;
  }

  /** Entries of each directory: name and full mode (debugfs `ls -p`). */
  async list(dirs: readonly string[]): Promise<Map<string, Array<{ name: string; mode: number; uid: number; gid: number }>>> {
    const result = new Map<string, Array<{ name: string; mode: number; uid: number; gid: number }>>();
    if (dirs.length === 0) return result;
    const { outputs } = await this.run(
      dirs.map((d) => `ls -p ${quote(d)}`),
      { write: false, strict: false },
    );
    dirs.forEach((d, i) => {
      const entries: Array<{ name: string; mode: number; uid: number; gid: number }> = [];
      for (const line of (outputs[i] ?? '').split('\n')) {
        const m = /^\/(\d+)\/([0-7]+)\/(\d+)\/(\d+)\/(.*)\/(\d*)\/$/.exec(line.trim());
        if (!m || m[5] === '.' || m[5] === '..' || m[1] === '0') continue;
        entries.push({ name: m[5] ?? '', mode: parseInt(m[2] ?? '0', 8), uid: Number(m[3]), gid: Number(m[4]) });
      }
      result.set(d, entries);
    });
    return result;
  }

  /** A file's contents, or undefined if it does not exist. */
  async readFile(path: string): Promise<Buffer | undefined> {
    const dir = await mkdtemp(join(tmpdir(), 'flash-dump-'));
    try {
      const out = join(dir, 'file');
      await this.run([`dump ${quote(path)} ${quote(out)}`], { write: false, strict: false });
      return await readFile(out).catch(() => undefined);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Removes a tree (files, symlinks, directories), listing it level by level. */
  async removeTree(path: string): Promise<void> {
    const top = (await this.types([path])).get(path);
    if (top === undefined) return;
    if (top !== 'dir') {
      await this.run([`rm ${quote(path)}`], { write: true, strict: true });
      return;
    }
    const dirs: string[] = [path];
    const leaves: string[] = [];
    let level = [path];
    while (level.length > 0) {
      const listing = await this.list(level);
      const next: string[] = [];
      for (const [dir, entries] of listing) {
        for (const e of entries) {
          const child = `${dir}/${e.name}`;
          if ((e.mode & 0o170000) === 0o040000) next.push(child);
          else leaves.push(child);
        }
      }
      dirs.push(...next);
      level = next;
    }
    const commands = [...leaves.map((p) => `rm ${quote(p)}`), ...dirs.reverse().map((d) => `rmdir ${quote(d)}`)];
    await this.run(commands, { write: true, strict: true });
  }

  /** Writes an install plan; owner classes resolve with `ids` (root's when undefined). */
  async applyPlan(plan: InstallPlan, ids: AgentIds | undefined): Promise<void> {
    await this.checkWritable();
    for (const p of plan.replace) await this.removeTree(p);
    const probe = [...new Set(plan.entries.map((e) => e.path))];
    const types = await this.types(probe);
    const staging = await mkdtemp(join(tmpdir(), 'flash-staging-'));
    try {
      const commands: string[] = [];
      const exists = (p: string): InodeType | undefined => types.get(p);
      let n = 0;
      for (const e of plan.entries) {
        const t = exists(e.path);
        const q = quote(e.path);
        switch (e.kind) {
          case 'parent':
            if (t === undefined) {
              commands.push(`mkdir ${q}`, `sif ${q} mode 040755`, `sif ${q} uid 0`, `sif ${q} gid 0`);
              types.set(e.path, 'dir');
            } else if (t !== 'dir') {
              throw new FlashError('E_TARGET', `${e.path} in the image is a ${t}, not a directory`);
            }
            break;
          case 'dir': {
            if (t === undefined) commands.push(`mkdir ${q}`);
            else if (t !== 'dir') throw new FlashError('E_TARGET', `${e.path} in the image is a ${t}, not a directory`);
            const { uid, gid } = resolveOwner(e.owner, ids);
            commands.push(`sif ${q} mode 0${(0o040000 | e.mode).toString(8)}`, `sif ${q} uid ${uid}`, `sif ${q} gid ${gid}`);
            types.set(e.path, 'dir');
            break;
          }
          case 'file': {
            if (t === 'dir') throw new FlashError('E_TARGET', `${e.path} in the image is a directory, expected a file`);
            if (t !== undefined) commands.push(`rm ${q}`);
            let source: string;
            if ('content' in e.source) {
              source = join(staging, `f${n++}`);
              await writeFile(source, e.source.content, { mode: 0o600 });
            } else {
              source = e.source.path;
            }
            const { uid, gid } = resolveOwner(e.owner, ids);
            commands.push(`write ${quote(source)} ${q}`, `sif ${q} mode 0${(0o100000 | e.mode).toString(8)}`, `sif ${q} uid ${uid}`, `sif ${q} gid ${gid}`);
            types.set(e.path, 'file');
            break;
          }
          case 'symlink':
            if (t === 'dir') throw new FlashError('E_TARGET', `${e.path} in the image is a directory, expected a symlink`);
            if (t !== undefined) commands.push(`rm ${q}`);
            commands.push(`symlink ${q} ${quote(e.target)}`, `sif ${q} uid 0`, `sif ${q} gid 0`);
            types.set(e.path, 'symlink');
            break;
        }
      }
      const { errors } = await this.run(commands, { write: true, strict: false });
      // `write` reports "Allocated inode: N" on stdout; anything on stderr is a failure.
      if (errors.length > 0) throw new FlashError('E_TOOL', `debugfs could not write the plan into ${this.spec}: ${errors.slice(0, 10).join('; ')}`);
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }
}
