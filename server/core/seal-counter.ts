/**
 * Sequence numbers for the stateless `seal` command: one counter file per
 * device under the key directory (`seq/<device>`), advanced durably, so each
 * sealed command gets a `seq` above the last one sealed for that device.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { assertValidId } from '../../protocol/index.js';
import { writeFileAtomic } from '../../lib/durable-file.js';
import { ensurePrivateDir } from '../../lib/fs.js';

export async function nextSealSeq(keysDir: string, deviceId: string, requested?: number): Promise<number> {
  assertValidId(deviceId);
  const dir = join(keysDir, 'seq');
  const file = join(dir, deviceId);
  let last = 0;
  try {
    const n = Number.parseInt((await readFile(file, 'utf8')).trim(), 10);
    if (Number.isSafeInteger(n) && n > 0) last = n;
  } catch {
    /* first command for this device */
  }
  const seq = requested ?? last + 1;
  await ensurePrivateDir(dir);
  await writeFileAtomic(file, `${Math.max(seq, last)}\n`, { mode: 0o600 });
  return seq;
}
