/**
 * Shared libraries the shipped Node needs that a Raspberry Pi OS image may
 * lack. Official Node builds (and npm's node-linux-* packages, which repackage
 * them) link libatomic.so.1; a minimal image without libatomic1 leaves the
 * agent crash-looping with exit 127 before it logs a line (the emulated board
 * test found this). So the library ships beside Node in `node/lib/`, and the
 * unit and the on-board CLI point the loader at it
 * (LD_LIBRARY_PATH=/opt/sensor-agent/node/lib). Taken from the same Debian
 * packages the cross compiler comes with (libatomic1-<arch>-cross), or from
 * this machine's own libatomic1 when the target is its CPU.
 */
import { copyFile, chmod, mkdir, realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { runTool, whichTool } from '../flasher/run-tool.js';
import { BuildError } from './errors.js';
import { TARGETS, type TargetArch } from './targets.js';

/** Libraries shipped when the Node binary needs them. Never libc, libstdc++ and the like: every image has those. */
export const SHIPPED_NODE_LIBS: readonly string[] = ['libatomic.so.1'];
export const NODE_LIB_DIR_REL = 'node/lib';

const CROSS_LIB_PACKAGE: Record<TargetArch, string> = { arm64: 'libatomic1-arm64-cross', armv7: 'libatomic1-armhf-cross', x64: 'libatomic1-amd64-cross' };

/** The DT_NEEDED entries of an ELF file, by binutils' readelf (it reads any CPU's ELF). */
export async function neededLibraries(file: string): Promise<string[]> {
  if (whichTool('readelf') === undefined) throw new BuildError('E_TOOL', 'readelf is missing (it reads which libraries Node needs): apt-get install binutils');
  const r = await runTool('readelf', ['-d', '-W', file]);
  if (r.code !== 0) throw new BuildError('E_NODE', `readelf cannot read ${file}: ${r.stderr.trim()}`);
  return [...r.stdout.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1] as string);
}

/** Copies the libraries of SHIPPED_NODE_LIBS that `nodeBinary` needs into `<tree>/node/lib`; returns their names. */
export async function shipNodeLibraries(tree: string, nodeBinary: string, arch: TargetArch, hostArch: TargetArch | undefined): Promise<string[]> {
  const wanted = (await neededLibraries(nodeBinary)).filter((l) => SHIPPED_NODE_LIBS.includes(l));
  if (wanted.length === 0) return [];
  const t = TARGETS[arch];
  const native = hostArch === arch;
  const dir = native ? `/usr/lib/${t.triplet}` : `/usr/${t.triplet}/lib`;
  await mkdir(join(tree, NODE_LIB_DIR_REL), { recursive: true });
  for (const lib of wanted) {
    let src: string;
    try {
      src = await realpath(join(dir, lib));
    } catch {
      const pkg = native ? 'libatomic1' : CROSS_LIB_PACKAGE[arch];
      throw new BuildError('E_TOOL', `${join(dir, lib)} is missing: Node ${arch} needs ${lib}, which ships with the agent. Install it: apt-get install ${pkg}`);
    }
    const dest = join(tree, NODE_LIB_DIR_REL, lib);
    await copyFile(src, dest);
    await chmod(dest, 0o644);
  }
  return wanted;
}
