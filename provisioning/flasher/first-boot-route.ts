/**
 * Hooking the hand-over into Raspberry Pi OS's own first-boot route, on the
 * boot partition: Bookworm runs `firstrun.sh` through `systemd.run=` on the
 * kernel command line (what Raspberry Pi Imager writes), Trixie runs
 * cloud-init from `user-data`/`meta-data` (NoCloud). Existing files from
 * Imager's customisation are extended, never replaced; nothing secret is
 * written here. The hook only calls /usr/local/lib/sensor-agent/firstboot,
 * which is idempotent, so a second trigger (sensor-agent-firstboot.service)
 * is harmless.
 */
import { BOARD } from './board-layout.js';
import { FlashError } from './errors.js';

export type FirstBootRoute = 'firstrun' | 'cloud-init';

export const HOOK_MARKER = 'sensor-agent-firstboot';
const HOOK_COMMAND = `if [ -x ${BOARD.firstbootScript} ]; then ${BOARD.firstbootScript}; fi`;
/** Where the boot partition is mounted on Bookworm and Trixie. */
export const BOOT_MOUNT = '/boot/firmware';
export const FIRSTRUN_ARGS = `systemd.run=${BOOT_MOUNT}/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target`;

/** VERSION_CODENAME from an os-release file. */
export function osCodename(osRelease: string | undefined): string | undefined {
  const m = /^VERSION_CODENAME=["']?([A-Za-z0-9_-]+)["']?\s*$/m.exec(osRelease ?? '');
  return m?.[1];
}

/**
 * The route an image uses: Imager's files on the boot partition decide
 * first (user-data: cloud-init, firstrun.sh: firstrun), then the release
 * (bookworm: firstrun; trixie and later, or cloud-init installed: cloud-init).
 */
export function detectRoute(bootFiles: readonly string[], codename: string | undefined, hasCloudInit: boolean): { route: FirstBootRoute; why: string } {
  const files = new Set(bootFiles.map((f) => f.toLowerCase()));
  if (files.has('user-data')) return { route: 'cloud-init', why: 'the boot partition has user-data' };
  if (files.has('firstrun.sh')) return { route: 'firstrun', why: 'the boot partition has firstrun.sh' };
  if (codename === 'bookworm' || codename === 'bullseye') return { route: 'firstrun', why: `the image is ${codename}` };
  if (codename !== undefined && codename !== '') {
    return hasCloudInit || codename === 'trixie' || codename === 'forky'
      ? { route: 'cloud-init', why: `the image is ${codename}${hasCloudInit ? ' with cloud-init' : ''}` }
      : { route: 'firstrun', why: `the image is ${codename} without cloud-init` };
  }
  if (hasCloudInit) return { route: 'cloud-init', why: 'the image has cloud-init' };
  return { route: 'firstrun', why: 'no release or cloud-init found: assuming Bookworm' };
}

/** A firstrun.sh of our own, for an image without Imager's. It removes itself like Imager's does. */
export function newFirstrun(): string {
  return [
    '#!/bin/bash',
    '# Raspberry Pi OS (Bookworm) first boot, run once through systemd.run= on the',
    '# kernel command line. Written by provisioning/flash for the sensor agent.',
    'set +e',
    `${HOOK_COMMAND}  # ${HOOK_MARKER}`,
    `rm -f ${BOOT_MOUNT}/firstrun.sh /boot/firstrun.sh`,
    `sed -i 's| systemd.run.*||g' ${BOOT_MOUNT}/cmdline.txt 2>/dev/null || sed -i 's| systemd.run.*||g' /boot/cmdline.txt`,
    'exit 0',
    '',
  ].join('\n');
}

/** Imager's (or any) firstrun.sh with the hook inserted before it removes itself (or before its final exit). */
export function extendFirstrun(existing: string): string {
  if (existing.includes(HOOK_MARKER)) return existing;
  const lines = existing.replace(/\r\n/g, '\n').split('\n');
  const hook = `${HOOK_COMMAND}  # ${HOOK_MARKER}`;
  let at = lines.findIndex((l) => /^\s*rm\s+-f\s+\S*firstrun\.sh/.test(l));
  if (at < 0) {
    for (let i = lines.length - 1; i >= 0; i--) {
      if (/^\s*exit\s+0\s*$/.test(lines[i] ?? '')) {
        at = i;
        break;
      }
    }
  }
  if (at < 0) {
    const body = existing.endsWith('\n') ? existing : `${existing}\n`;
    return `${body}${hook}\n`;
  }
  lines.splice(at, 0, hook);
  return lines.join('\n');
}

/** cmdline.txt (one line) with Imager's systemd.run= arguments, unless some are there already. */
export function extendCmdline(cmdline: string): string {
  const line = cmdline.replace(/\r?\n/g, ' ').trim();
  if (/(^|\s)systemd\.run=/.test(line)) return `${line}\n`;
  return `${line} ${FIRSTRUN_ARGS}\n`;
}

/** The cloud-init bootcmd entry (runs early on every boot; a no-op once the hand-over is done). */
const BOOTCMD_ITEM = `'${HOOK_COMMAND}'  # ${HOOK_MARKER}`;

export function newUserData(): string {
  return ['#cloud-config', '# Written by provisioning/flash for the sensor agent.', 'bootcmd:', `  - ${BOOTCMD_ITEM}`, ''].join('\n');
}

/** An existing #cloud-config user-data with the bootcmd entry added (to its bootcmd list, or as a new one). */
export function extendUserData(existing: string): string {
  if (existing.includes(HOOK_MARKER)) return existing;
  const text = existing.replace(/\r\n/g, '\n');
  if (!/^#cloud-config[ \t]*$/m.test(text.split('\n')[0] ?? '')) {
    throw new FlashError(
      'E_FIRST_BOOT',
      "the boot partition's user-data is not a #cloud-config document (a script or MIME multipart): add the sensor-agent hook by hand (see provisioning/README.md)",
    );
  }
  const lines = text.split('\n');
  const keyAt = lines.findIndex((l) => /^bootcmd\s*:/.test(l));
  if (keyAt < 0) {
    const body = text.endsWith('\n') ? text : `${text}\n`;
    return `${body}bootcmd:\n  - ${BOOTCMD_ITEM}\n`;
  }
  const rest = (lines[keyAt] ?? '').replace(/^bootcmd\s*:/, '').trim();
  if (rest !== '' && !rest.startsWith('#')) {
    throw new FlashError('E_FIRST_BOOT', `user-data has an inline bootcmd (${rest}): rewrite it as a block list, or add the sensor-agent hook by hand`);
  }
  // Indentation of the existing list items (a block sequence may sit at the key's column).
  let indent = '  ';
  for (let i = keyAt + 1; i < lines.length; i++) {
    const l = lines[i] ?? '';
    if (l.trim() === '' || l.trim().startsWith('#')) continue;
    const m = /^(\s*)- /.exec(l);
    if (m) indent = m[1] ?? '';
    break;
  }
  lines.splice(keyAt + 1, 0, `${indent}- ${BOOTCMD_ITEM}`);
  return lines.join('\n');
}

export function newMetaData(deviceId: string): string {
  return `instance-id: sensor-agent-${deviceId}\n`;
}
