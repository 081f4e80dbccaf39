import { expect } from 'chai';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GpioError, type GpioErrorCode } from '../../agent/gpio/errors.js';
import { findHeaderChip, pickHeaderChip, readGpioChips, resolveSysfsGpio, type GpioChipInfo } from '../../agent/gpio/sysfs-resolver.js';

interface ChipSpec {
  base: number;
  label: string;
  ngpio: number;
}

/** Writes a /sys/class/gpio look-alike: export, unexport and one gpiochipN dir per chip, files newline-terminated like sysfs. */
async function fakeSysfs(root: string, chips: readonly ChipSpec[]): Promise<string> {
  await mkdir(root, { recursive: true });
  await writeFile(join(root, 'export'), '');
  await writeFile(join(root, 'unexport'), '');
  for (const chip of chips) {
    const dir = join(root, `gpiochip${chip.base}`);
    await mkdir(dir);
    await writeFile(join(dir, 'base'), `${chip.base}\n`);
    await writeFile(join(dir, 'label'), `${chip.label}\n`);
    await writeFile(join(dir, 'ngpio'), `${chip.ngpio}\n`);
  }
  return root;
}

async function refusal(p: Promise<unknown>, code: GpioErrorCode): Promise<GpioError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(GpioError);
    expect((err as GpioError).code, (err as Error).message).to.equal(code);
    return err as GpioError;
  }
  throw new Error(`expected a ${code} refusal`);
}

// Layouts as reported on real boards (see the report / README for the sources).
const PI3_OLD_KERNEL: ChipSpec[] = [
  { base: 0, label: 'pinctrl-bcm2835', ngpio: 54 },
  { base: 504, label: 'raspberrypi-exp-gpio', ngpio: 8 },
];
const PI4_KERNEL_6_6: ChipSpec[] = [
  { base: 512, label: 'pinctrl-bcm2711', ngpio: 58 },
  { base: 570, label: 'raspberrypi-exp-gpio', ngpio: 8 },
];
const PI5_KERNEL_6_6: ChipSpec[] = [
  { base: 512, label: 'gpio-brcmstb@107d508500', ngpio: 32 },
  { base: 544, label: 'gpio-brcmstb@107d508520', ngpio: 4 },
  { base: 548, label: 'gpio-brcmstb@107d517c00', ngpio: 17 },
  { base: 565, label: 'gpio-brcmstb@107d517c20', ngpio: 6 },
  { base: 571, label: 'pinctrl-rp1', ngpio: 54 },
];
// Partial: the rp1 chip at 399 and one SoC chip at 453 are what was reported for 6.1; the other SoC chips are left out.
const PI5_KERNEL_6_1: ChipSpec[] = [
  { base: 399, label: 'pinctrl-rp1', ngpio: 54 },
  { base: 453, label: 'gpio-brcmstb@107d517c00', ngpio: 17 },
];

describe('agent/gpio sysfs resolver', () => {
  let tmp: string;

  beforeEach(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'gpio-sysfs-'));
  });

  afterEach(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('base 0 (pinctrl-bcm2835, kernels before 6.6): BCM n is sysfs n, 54 lines', async () => {
    const root = await fakeSysfs(join(tmp, 'gpio'), PI3_OLD_KERNEL);
    const led = await resolveSysfsGpio(17, { root });
    expect(led.sysfs).to.equal(17);
    expect(led.chip).to.deep.equal({ dir: 'gpiochip0', label: 'pinctrl-bcm2835', base: 0, ngpio: 54 });
    expect((await resolveSysfsGpio(0, { root })).sysfs).to.equal(0);
    expect((await resolveSysfsGpio(53, { root })).sysfs).to.equal(53);
    const err = await refusal(resolveSysfsGpio(54, { root }), 'E_GPIO_PIN_RANGE');
    expect(err.pin).to.equal(54);
    expect(err.message).to.include('lines 0-53');
  });

  it('base 512 (pinctrl-bcm2711, Raspberry Pi kernels >= 6.6): BCM 17 is sysfs 529', async () => {
    const root = await fakeSysfs(join(tmp, 'gpio'), PI4_KERNEL_6_6);
    expect((await resolveSysfsGpio(17, { root })).sysfs).to.equal(529);
    expect((await resolveSysfsGpio(27, { root })).sysfs).to.equal(539);
    expect((await resolveSysfsGpio(22, { root })).sysfs).to.equal(534);
    expect((await resolveSysfsGpio(57, { root })).sysfs).to.equal(569);
    await refusal(resolveSysfsGpio(58, { root }), 'E_GPIO_PIN_RANGE');
  });

  it('Pi 5 on 6.6+: the header is the pinctrl-rp1 chip at 571, not the BCM2712 chips at 512', async () => {
    const root = await fakeSysfs(join(tmp, 'gpio'), PI5_KERNEL_6_6);
    const led = await resolveSysfsGpio(17, { root });
    expect(led.sysfs).to.equal(588);
    expect(led.chip.dir).to.equal('gpiochip571');
    expect(led.chip.label).to.equal('pinctrl-rp1');
    expect((await resolveSysfsGpio(27, { root })).sysfs).to.equal(598);
    await refusal(resolveSysfsGpio(54, { root }), 'E_GPIO_PIN_RANGE');
  });

  it('Pi 5 on 6.1: the same rule finds rp1 at 399, below the SoC chips', async () => {
    const root = await fakeSysfs(join(tmp, 'gpio'), PI5_KERNEL_6_1);
    expect((await resolveSysfsGpio(17, { root })).sysfs).to.equal(416);
  });

  it('prefers pinctrl-rp1 over a bcm pinctrl chip when both are present', async () => {
    const root = await fakeSysfs(join(tmp, 'gpio'), [
      { base: 0, label: 'pinctrl-bcm2711', ngpio: 58 },
      { base: 100, label: 'pinctrl-rp1', ngpio: 54 },
    ]);
    expect((await findHeaderChip({ root })).label).to.equal('pinctrl-rp1');
  });

  it('reads base from the base file and ignores chips whose files are missing or malformed', async () => {
    const root = await fakeSysfs(join(tmp, 'gpio'), PI4_KERNEL_6_6);
    await mkdir(join(root, 'gpiochip600'));
    await writeFile(join(root, 'gpiochip600', 'label'), 'pinctrl-rp1\n'); // no base, no ngpio
    await mkdir(join(root, 'gpiochip700'));
    await writeFile(join(root, 'gpiochip700', 'base'), 'seven hundred\n');
    await writeFile(join(root, 'gpiochip700', 'label'), 'pinctrl-rp1\n');
    await writeFile(join(root, 'gpiochip700', 'ngpio'), '54\n');
    await mkdir(join(root, 'gpio529')); // an exported line, not a chip
    const chips = await readGpioChips(root);
    expect(chips.map((c) => c.dir)).to.deep.equal(['gpiochip512', 'gpiochip570']);
    expect((await resolveSysfsGpio(17, { root })).sysfs).to.equal(529);
  });

  it('E_GPIO_UNAVAILABLE when the root does not exist (kernel without CONFIG_GPIO_SYSFS)', async () => {
    const err = await refusal(resolveSysfsGpio(17, { root: join(tmp, 'absent') }), 'E_GPIO_UNAVAILABLE');
    expect(err.message).to.include(join(tmp, 'absent'));
  });

  it('E_GPIO_NO_CHIP names the chips found when none drives a known header', async () => {
    const root = await fakeSysfs(join(tmp, 'gpio'), [{ base: 512, label: 'gpio-brcmstb@107d508500', ngpio: 32 }]);
    const err = await refusal(resolveSysfsGpio(17, { root }), 'E_GPIO_NO_CHIP');
    expect(err.message).to.include('gpiochip512 "gpio-brcmstb@107d508500" base 512 ngpio 32');
    await refusal(resolveSysfsGpio(17, { root: await fakeSysfs(join(tmp, 'empty'), []) }), 'E_GPIO_NO_CHIP');
  });

  it('accepts other header labels for non-Raspberry Pi boards', async () => {
    const root = await fakeSysfs(join(tmp, 'gpio'), [{ base: 32, label: 'custom-soc-gpio', ngpio: 16 }]);
    expect((await resolveSysfsGpio(5, { root, labels: ['custom-soc-gpio'] })).sysfs).to.equal(37);
  });

  it('refuses non-integer and negative pins', async () => {
    const chip: GpioChipInfo = { dir: 'gpiochip512', label: 'pinctrl-bcm2711', base: 512, ngpio: 58 };
    const root = await fakeSysfs(join(tmp, 'gpio'), PI4_KERNEL_6_6);
    await refusal(resolveSysfsGpio(-1, { root }), 'E_GPIO_PIN_RANGE');
    await refusal(resolveSysfsGpio(1.5, { root }), 'E_GPIO_PIN_RANGE');
    expect(pickHeaderChip([chip])).to.equal(chip);
  });
});
