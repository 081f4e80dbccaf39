/**
 * Command seq allocation in SQLite: the device's next seq taken in one
 * IMMEDIATE transaction (two senders, in any process, never get the same
 * one), one device or a batch (one commit).
 */
import { RegistryError } from '../errors.js';
import type { DeviceRecord } from '../records.js';
import type { SeqStore } from '../types.js';
import type { SqliteDb } from './db.js';
import { requireDevice } from './devices.js';

export function allocateSeq(s: SqliteDb, deviceId: string): { seq: number; device: DeviceRecord } {
  const device = requireDevice(s, deviceId);
  if (device.state === 'decommissioned') {
    throw new RegistryError('E_DECOMMISSIONED', `device ${deviceId} is decommissioned; provision it again with a new token or bundle`);
  }
  if (!device.encryption) throw new RegistryError('E_NO_KEY', `device ${deviceId} has no registered encryption key: nothing is sent (never in plaintext)`);
  const row = s.db.prepare('UPDATE devices SET next_seq = next_seq + 1 WHERE id = ? RETURNING next_seq - 1 AS seq').get(deviceId) as { seq: number };
  return { seq: row.seq, device };
}

export class SqliteSeqStore implements SeqStore {
  readonly #s: SqliteDb;

  constructor(s: SqliteDb) {
    this.#s = s;
  }

  /**
   * Allocates the device's next `seq` (one IMMEDIATE transaction: two senders
   * never get the same one) and returns it with the key to seal to. Refuses a
   * device without an encryption key or a decommissioned one.
   */
  async allocate(deviceId: string): Promise<{ seq: number; device: DeviceRecord }> {
    return this.#s.db.transaction(() => allocateSeq(this.#s, deviceId)).immediate();
  }

  /**
   * allocateSeq for many devices in one IMMEDIATE transaction (one commit, so
   * one fsync under synchronous=FULL, for the whole batch). Per device: its
   * seq, or the RegistryError allocateSeq would throw (that device changes
   * nothing; the others proceed). Any other error rolls back the whole batch.
   */
  async allocateMany(deviceIds: readonly string[]): Promise<({ seq: number; device: DeviceRecord } | RegistryError)[]> {
    return this.#s.db
      .transaction(() =>
        deviceIds.map((id) => {
          try {
            return allocateSeq(this.#s, id);
          } catch (err) {
            if (err instanceof RegistryError) return err;
            throw err;
          }
        }),
      )
      .immediate();
  }
}
