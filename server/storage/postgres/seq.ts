/**
 * Command seq allocation in PostgreSQL: the devices' rows are locked (in id
 * order, so two batches never deadlock), checked as server/storage/sqlite/seq.ts
 * #allocateSeq does, and advanced by one UPDATE ... RETURNING: a seq is never
 * handed out twice, on any machine.
 */
import { RegistryError } from '../errors.js';
import type { DeviceRecord } from '../records.js';
import type { SeqStore } from '../types.js';
import type { PgDb } from './db.js';
import { DEVICE_SELECT, deviceRecordOf, noDevice, type DeviceRowWith } from './devices.js';

export class PgSeqStore implements SeqStore {
  readonly #db: PgDb;

  constructor(db: PgDb, now: () => number) {
    this.#db = db;
    void now;
  }

  /** One statement (the row lock held only while it runs); when it takes nothing, the device is read for the error. */
  async allocate(deviceId: string): Promise<{ seq: number; device: DeviceRecord }> {
    const row = await this.#db.one<DeviceRowWith & { seq: number }>(
      `WITH s AS (
         UPDATE devices SET next_seq = next_seq + 1
         WHERE id = $1 AND state <> 'decommissioned'
           AND EXISTS (SELECT 1 FROM device_keys WHERE device_id = $1 AND use = 'enc' AND status = 'current')
         RETURNING id, next_seq - 1 AS seq)
       SELECT x.*, s.seq FROM (${DEVICE_SELECT}) x JOIN s ON s.id = x.id`,
      [deviceId],
    );
    if (row) return { seq: row.seq, device: { ...deviceRecordOf(row), nextSeq: row.seq } };
    const [refused] = await this.allocateMany([deviceId]);
    if (refused instanceof RegistryError) throw refused;
    return refused as { seq: number; device: DeviceRecord };
  }

  allocateMany(deviceIds: readonly string[]): Promise<({ seq: number; device: DeviceRecord } | RegistryError)[]> {
    if (deviceIds.length === 0) return Promise.resolve([]);
    return this.#db.tx(async (sql) => {
      const unique = [...new Set(deviceIds)];
      const rows = await sql.q<DeviceRowWith>(`${DEVICE_SELECT} WHERE d.id = ANY($1) ORDER BY d.id FOR UPDATE OF d`, [unique]);
      const records = new Map(rows.map((r) => [r.id, deviceRecordOf(r)]));
      // Per device: its error, or how many seqs it takes (an id named twice takes two).
      const refused = new Map<string, RegistryError>();
      const wanted = new Map<string, number>();
      for (const id of deviceIds) {
        const device = records.get(id);
        if (!device) refused.set(id, noDevice(id));
        else if (device.state === 'decommissioned')
          refused.set(id, new RegistryError('E_DECOMMISSIONED', `device ${id} is decommissioned; provision it again with a new token or bundle`));
        else if (!device.encryption)
          refused.set(id, new RegistryError('E_NO_KEY', `device ${id} has no registered encryption key: nothing is sent (never in plaintext)`));
        else wanted.set(id, (wanted.get(id) ?? 0) + 1);
      }
      const first = new Map<string, number>();
      if (wanted.size) {
        const taken = await sql.q<{ id: string; first: number }>(
          `UPDATE devices d SET next_seq = d.next_seq + w.n FROM (SELECT unnest($1::text[]) AS id, unnest($2::bigint[]) AS n) w
           WHERE d.id = w.id RETURNING d.id, d.next_seq - w.n AS first`,
          [[...wanted.keys()], [...wanted.values()]],
        );
        for (const t of taken) first.set(t.id, t.first);
      }
      return deviceIds.map((id) => {
        const error = refused.get(id);
        if (error) return error;
        const seq = first.get(id) as number;
        first.set(id, seq + 1);
        const device = records.get(id) as DeviceRecord;
        return { seq, device: { ...device, nextSeq: seq } };
      });
    });
  }
}
