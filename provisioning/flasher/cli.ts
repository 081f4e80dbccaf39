/**
 * Command line of provisioning/flash (the shell wrapper runs this file):
 *   flash --bundle DIR (--root DIR | --image FILE) [--agent DIR]
 *         [--method auto|debugfs|loop] [--first-boot auto|firstrun|cloud-init]
 */
import { parseArgs } from 'node:util';
import { runCliMain, runIfInvokedDirectly } from './cli-main.js';
import { FlashError, isFlashError } from './errors.js';
import { DEFAULT_AGENT_DIR, flash, type FlashOptions, type FlashReport } from './flash.js';

const PROG = 'flash';

export const USAGE = `Usage: provisioning/flash --bundle DIR (--root DIR | --image FILE) [options]

Installs a bundle from 'provision-server bundle' and the built agent onto a
board's root file system.

  --bundle DIR      the bundle (config.json, trust.jwks, ca.pem, client.crt/key, enroll.token[, keys/])
  --root DIR        a mounted root file system (needs root): installs and hands
                    the files to the agent's user at once
  --image FILE      a raw Raspberry Pi OS image (FAT boot + ext4 root partitions)
  --agent DIR       the built agent tree (default: ${DEFAULT_AGENT_DIR},
                    made by provisioning/build-agent --arch arm64|armv7|x64).
                    Refused, with the fix, when it does not fit the target: a
                    tree for another CPU than the image's, or one built with
                    --node system for an image without /usr/bin/node, with a
                    nodejs older than 20.19 (Bookworm's 18.x) or of another
                    ABI than its GPIO addon (read from the image's dpkg status)
  --method M        for --image: debugfs (no privileges: files root-owned until
                    the first boot hands them over), loop (root: loop devices,
                    hand-over now), auto (default: loop when root and available)
  --first-boot R    for --image with debugfs: firstrun (Bookworm), cloud-init
                    (Trixie) or auto (default: from the image)
  -h, --help        this text
`;

const METHODS = ['auto', 'debugfs', 'loop'] as const;
const ROUTES = ['auto', 'firstrun', 'cloud-init'] as const;

function oneOf<T extends string>(value: string | undefined, allowed: readonly T[], flag: string): T | undefined {
  if (value === undefined) return undefined;
  if (!(allowed as readonly string[]).includes(value)) throw new FlashError('E_USAGE', `${flag} must be one of ${allowed.join(', ')}`);
  return value as T;
}

/** Parses the command line; returns undefined for --help. */
export function parseFlashArgs(argv: readonly string[]): FlashOptions | undefined {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: {
        bundle: { type: 'string' },
        root: { type: 'string' },
        image: { type: 'string' },
        agent: { type: 'string' },
        method: { type: 'string' },
        'first-boot': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (err) {
    throw new FlashError('E_USAGE', (err as Error).message);
  }
  const v = parsed.values;
  if (v.help) return undefined;
  if (v.bundle === undefined) throw new FlashError('E_USAGE', '--bundle DIR is required');
  if ((v.root === undefined) === (v.image === undefined)) throw new FlashError('E_USAGE', 'give exactly one target: --root DIR or --image FILE');
  const options: FlashOptions = { bundle: v.bundle };
  if (v.root !== undefined) options.root = v.root;
  if (v.image !== undefined) options.image = v.image;
  if (v.agent !== undefined) options.agent = v.agent;
  const method = oneOf(v.method, METHODS, '--method');
  if (method !== undefined) options.method = method;
  const route = oneOf(v['first-boot'], ROUTES, '--first-boot');
  if (route !== undefined) options.firstBoot = route;
  return options;
}

export function formatReport(r: FlashReport): string {
  const lines = [`${PROG}: device ${r.deviceId} installed into ${r.target} (${r.method}, ${r.entries} entries)`];
  if (r.targetMachine) lines.push(`${PROG}: target CPU: ${r.targetMachine}`);
  if (r.ownership === 'final' && r.ids) lines.push(`${PROG}: files handed to sensor-agent (uid ${r.ids.uid}, gid ${r.ids.gid})`);
  else lines.push(`${PROG}: the sensor-agent user is created at first boot, which hands it its files (until then they are root's; secrets 0600)`);
  if (r.route) lines.push(`${PROG}: first boot through ${r.route.route} (${r.route.why}) and sensor-agent-firstboot.service`);
  for (const w of r.warnings) lines.push(`${PROG}: warning: ${w}`);
  return `${lines.join('\n')}\n`;
}

export async function main(argv: readonly string[]): Promise<number> {
  return runCliMain({ prog: PROG, command: 'provisioning/flash', isCliError: isFlashError }, async () => {
    const options = parseFlashArgs(argv);
    if (options === undefined) {
      process.stdout.write(USAGE);
      return 0;
    }
    process.stdout.write(formatReport(await flash(options)));
    return 0;
  });
}

await runIfInvokedDirectly(import.meta.url, main);
