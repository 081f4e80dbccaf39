/**
 * Child process of the crash tests: performs one durable write of the agent
 * (a state update, or a key store rotate/generate) and dies by SIGKILL right
 * before the N-th rename whose target's name matches CRASH_RENAME_TARGET:
 * a real crash between the temp write (complete and fsynced) and the rename.
 *
 * argv: state DIR DEVICE_ID | keystore-rotate DIR | keystore-generate DIR
 * env: CRASH_RENAME_TARGET (regex on the target's basename), CRASH_AT (1-based, default 1)
 */
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { basename } from 'node:path';

const require = createRequire(import.meta.url);
const fsp = require('node:fs/promises') as typeof import('node:fs/promises');
const target = process.env.CRASH_RENAME_TARGET ? new RegExp(process.env.CRASH_RENAME_TARGET) : undefined;
const crashAt = Number(process.env.CRASH_AT ?? '1');
let seen = 0;
const realRename = fsp.rename;
fsp.rename = async (from, to) => {
  if (target && target.test(basename(String(to)))) {
    seen++;
    if (seen === crashAt) {
      process.stdout.write(`crashing before rename ${String(from)} -> ${String(to)}\n`);
      process.kill(process.pid, 'SIGKILL');
      await new Promise(() => undefined);
    }
  }
  return realRename(from, to);
};
// The agent's modules import { rename } from 'node:fs/promises': make that binding the patched one.
syncBuiltinESMExports();

const [op, dir, deviceId] = process.argv.slice(2);
if (op === 'state') {
  const { StateStore } = await import('../../agent/store/state.js');
  const store = await StateStore.open(dir as string, deviceId as string);
  await store.update((d) => {
    d.last_seq += 1;
    d.settings.sensor = { name: `after-${d.last_seq}`, sample_interval_s: 10 + d.last_seq };
  });
} else if (op === 'keystore-rotate' || op === 'keystore-generate') {
  const { KeyStore } = await import('../../agent/store/keystore.js');
  const ks = await KeyStore.open(dir as string, { create: true });
  if (op === 'keystore-rotate') await ks.rotate();
  else await ks.generate({ force: true });
} else {
  throw new Error(`unknown op ${String(op)}`);
}
process.stdout.write('done\n');
