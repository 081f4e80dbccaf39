/**
 * Resolves a BCM GPIO number (the number printed on Raspberry Pi pinout
 * diagrams) to the kernel's global sysfs GPIO number, which is what
 * `/sys/class/gpio/export` and onoff's `Gpio` take.
 *
 * The global number is `base + offset` of the gpiochip that drives the 40-pin
 * header, and the base is not fixed:
 *   - Pi 0-3 (pinctrl-bcm2835) and Pi 4 (pinctrl-bcm2711) on kernels < 6.6:
 *     base 0, so BCM 17 = 17;
 *   - the same boards on Raspberry Pi kernels >= 6.6: base 512, BCM 17 = 529;
 *   - Pi 5: the header is on the RP1 southbridge (label pinctrl-rp1, 54 lines),
 *     after the BCM2712's own gpio-brcmstb chips: base 571 on 6.6+ kernels
 *     (399 on the 6.1 kernels it shipped with), BCM 17 = 588.
 * So the base is always read from the `base`, `label` and `ngpio` files of each `<root>/gpiochipN` directory,
 * never hard-coded. The root is a parameter so tests can point it at a fake tree.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GpioError } from './errors.js';

export const DEFAULT_SYSFS_ROOT = '/sys/class/gpio';

/**
 * Labels of gpiochips that drive the 40-pin header, best first. RP1 comes
 * first: on a Pi 5 the header is there, whatever else the SoC exposes.
 */
export const HEADER_CHIP_LABELS: readonly string[] = ['pinctrl-rp1', 'pinctrl-bcm2711', 'pinctrl-bcm2835'];

export interface GpioChipInfo {
  /** Directory name under the root, e.g. `gpiochip512`. */
  readonly dir: string;
  readonly label: string;
  readonly base: number;
  readonly ngpio: number;
}

export interface ResolvedPin {
  /** The BCM (header) number asked for, i.e. the line offset on the header chip. */
  readonly bcm: number;
  /** The global sysfs GPIO number: chip base + bcm. */
  readonly sysfs: number;
  readonly chip: GpioChipInfo;
}

export interface ResolverOptions {
  /** Defaults to /sys/class/gpio. */
  root?: string;
  /** Header chip labels to accept, best first (defaults to HEADER_CHIP_LABELS); set for non-Raspberry Pi boards. */
  labels?: readonly string[];
}

async function readTrimmed(path: string): Promise<string> {
  return (await readFile(path, 'utf8')).trim();
}

function parseCount(text: string): number | null {
  return /^\d+$/.test(text) ? Number(text) : null;
}

/**
 * Every gpiochip under the root, sorted by base. Chips whose files cannot be
 * read or parsed are left out. Throws E_GPIO_UNAVAILABLE when the root itself
 * cannot be listed (kernel without CONFIG_GPIO_SYSFS, or no such directory).
 */
export async function readGpioChips(root: string = DEFAULT_SYSFS_ROOT): Promise<GpioChipInfo[]> {
  let names: string[];
  try {
    names = await readdir(root);
  } catch (err) {
    throw new GpioError(
      'E_GPIO_UNAVAILABLE',
      `sysfs GPIO interface not found at ${root} (${(err as NodeJS.ErrnoException).code ?? String(err)}): ` +
        'the kernel may be built without CONFIG_GPIO_SYSFS',
      { cause: err },
    );
  }
  const chips: GpioChipInfo[] = [];
  for (const dir of names.filter((n) => /^gpiochip\d+$/.test(n))) {
    try {
      const [baseText, label, ngpioText] = await Promise.all([
        readTrimmed(join(root, dir, 'base')),
        readTrimmed(join(root, dir, 'label')),
        readTrimmed(join(root, dir, 'ngpio')),
      ]);
      const base = parseCount(baseText);
      const ngpio = parseCount(ngpioText);
      if (base === null || ngpio === null) continue;
      chips.push({ dir, label, base, ngpio });
    } catch {
      // Not a readable gpiochip (or it vanished while listing): not a candidate.
    }
  }
  return chips.sort((a, b) => a.base - b.base);
}

function describeChips(chips: readonly GpioChipInfo[]): string {
  if (chips.length === 0) return 'none';
  return chips.map((c) => `${c.dir} "${c.label}" base ${c.base} ngpio ${c.ngpio}`).join('; ');
}

/** Picks the header chip: the first label in `labels` that some chip has (lowest base on a tie). */
export function pickHeaderChip(
  chips: readonly GpioChipInfo[],
  labels: readonly string[] = HEADER_CHIP_LABELS,
  root: string = DEFAULT_SYSFS_ROOT,
): GpioChipInfo {
  for (const label of labels) {
    const chip = chips.find((c) => c.label === label);
    if (chip !== undefined) return chip;
  }
  throw new GpioError('E_GPIO_NO_CHIP', `no gpiochip under ${root} is labelled ${labels.join(' or ')} (found: ${describeChips(chips)})`);
}

/** Reads the root and returns the header chip (E_GPIO_UNAVAILABLE, E_GPIO_NO_CHIP). */
export async function findHeaderChip(options: ResolverOptions = {}): Promise<GpioChipInfo> {
  const root = options.root ?? DEFAULT_SYSFS_ROOT;
  return pickHeaderChip(await readGpioChips(root), options.labels ?? HEADER_CHIP_LABELS, root);
}

/** base + pin on an already found header chip (E_GPIO_PIN_RANGE when the chip has no such line). */
export function resolveOnChip(chip: GpioChipInfo, bcm: number): ResolvedPin {
  if (!Number.isInteger(bcm) || bcm < 0 || bcm >= chip.ngpio) {
    throw new GpioError(
      'E_GPIO_PIN_RANGE',
      `GPIO ${String(bcm)} is not a line of ${chip.dir} "${chip.label}" (lines 0-${chip.ngpio - 1})`,
      Number.isInteger(bcm) ? { pin: bcm } : {},
    );
  }
  return { bcm, sysfs: chip.base + bcm, chip };
}

/** BCM pin -> sysfs number, reading the gpiochips under the root. */
export async function resolveSysfsGpio(bcm: number, options: ResolverOptions = {}): Promise<ResolvedPin> {
  return resolveOnChip(await findHeaderChip(options), bcm);
}

export function describeResolvedPin(p: ResolvedPin): string {
  return `BCM ${p.bcm} = sysfs ${p.sysfs} (${p.chip.dir} ${p.chip.label})`;
}
