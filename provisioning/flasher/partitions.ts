/**
 * The partitions of a raw disk image (Raspberry Pi OS: MBR, a FAT boot
 * partition and an ext4 root), read with `sfdisk --json`. Nothing is mounted.
 */
import { FlashError } from './errors.js';
import { mustRun, requireTool } from './run-tool.js';

export interface Partition {
  index: number;
  /** Byte offset and size inside the image. */
  offset: number;
  size: number;
  type: string;
}

export interface ImageLayout {
  boot: Partition;
  root: Partition;
}

const FAT_TYPES = new Set(['b', 'c', 'e', '6', 'ef', 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7', 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B']);
const LINUX_TYPES = new Set(['83', '0FC63DAF-8483-4772-8E79-3D69D8477DE4', 'B921B045-1DF0-41C3-AF44-4C6F280D3FAE', '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709']);

interface SfdiskJson {
  partitiontable?: { sectorsize?: number; partitions?: Array<{ node?: string; start?: number; size?: number; type?: string }> };
}

/** Parses `sfdisk --json` output: the first FAT partition is the boot partition, the first Linux one the root. */
export function parseSfdiskJson(json: string, image: string): ImageLayout {
  let table: SfdiskJson;
  try {
    table = JSON.parse(json) as SfdiskJson;
  } catch {
    throw new FlashError('E_IMAGE', `${image}: cannot read its partition table`);
  }
  const sector = table.partitiontable?.sectorsize ?? 512;
  const parts: Partition[] = (table.partitiontable?.partitions ?? []).map((p, i) => ({
    index: i + 1,
    offset: (p.start ?? 0) * sector,
    size: (p.size ?? 0) * sector,
    type: (p.type ?? '')
      .toUpperCase()
      .replace(/^0X/, '')
      .replace(/^([0-9A-F]{1,2})$/, (m) => m.toLowerCase()),
  }));
  const boot = parts.find((p) => FAT_TYPES.has(p.type));
  const root = parts.find((p) => LINUX_TYPES.has(p.type));
  if (boot === undefined || root === undefined) {
    throw new FlashError(
      'E_IMAGE',
      `${image} is not a Raspberry Pi OS style image: expected a FAT boot partition and a Linux root partition, found ${parts.map((p) => `#${p.index} type ${p.type}`).join(', ') || 'no partitions'}`,
    );
  }
  return { boot, root };
}

export async function readImageLayout(image: string): Promise<ImageLayout> {
  const sfdisk = requireTool('sfdisk', 'fdisk');
  const r = await mustRun(sfdisk, ['--json', image], `reading the partition table of ${image}`);
  return parseSfdiskJson(r.stdout, image);
}
