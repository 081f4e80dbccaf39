/** The FAT boot partition inside a disk image, through mtools at a byte offset (`image@@offset`). */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FlashError } from './errors.js';
import { mustRun, requireTool, runTool } from './run-tool.js';

const ENV = { MTOOLS_SKIP_CHECK: '1' };
const NAME = /^[A-Za-z0-9._-]+$/;

function checkName(name: string): void {
  if (!NAME.test(name)) throw new FlashError('E_TARGET', `unsupported boot partition file name ${JSON.stringify(name)}`);
}

export class FatImage {
  private readonly mdir = requireTool('mdir', 'mtools');
  private readonly mcopy = requireTool('mcopy', 'mtools');
  private readonly mdel = requireTool('mdel', 'mtools');

  constructor(
    readonly image: string,
    readonly offset: number,
  ) {}

  private get drive(): string {
    return `${this.image}@@${this.offset}`;
  }

  /** Names in the partition's top directory (directories end with /). */
  async list(): Promise<string[]> {
    const r = await mustRun(this.mdir, ['-b', '-i', this.drive, '::/'], `listing the boot partition of ${this.image}`, { env: ENV });
    return r.stdout
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l.startsWith('::/'))
      .map((l) => l.slice(3));
  }

  async read(name: string): Promise<Buffer | undefined> {
    checkName(name);
    const dir = await mkdtemp(join(tmpdir(), 'flash-fat-'));
    try {
      const out = join(dir, 'file');
      const r = await runTool(this.mcopy, ['-n', '-i', this.drive, `::/${name}`, out], { env: ENV });
      if (r.code !== 0) return undefined;
      return await readFile(out);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Writes (replaces) a file in the top directory. Never used for secrets: FAT has no permissions. */
  async write(name: string, content: string | Buffer): Promise<void> {
    checkName(name);
    const dir = await mkdtemp(join(tmpdir(), 'flash-fat-'));
    try {
      const src = join(dir, 'file');
      await writeFile(src, content, { mode: 0o644 });
      await mustRun(this.mcopy, ['-o', '-i', this.drive, src, `::/${name}`], `writing ${name} to the boot partition of ${this.image}`, { env: ENV });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  async remove(name: string): Promise<void> {
    checkName(name);
    await mustRun(this.mdel, ['-i', this.drive, `::/${name}`], `deleting ${name} from the boot partition of ${this.image}`, { env: ENV });
  }
}
