/**
 * Fan-out: one action to every matching device, with bounded concurrency, a
 * wait for each ack, and a record (fan-out id) so that a re-run with the id
 * resumes: devices that already acked are skipped, an unanswered command still
 * valid is re-published as it was sealed (same jti and seq: the device applies
 * it at most once), and only the rest are sealed anew.
 */
import type { Action } from '../protocol/index.js';
import type { AckWaiters } from './core/ack-waiters.js';
import type { CommandSender } from './core/command-sender.js';
import { isRegistryError } from './registry/errors.js';
import type { CommandRecord, FanoutRecord } from './storage/records.js';
import type { Storage } from './storage/types.js';
import { printable } from './terminal-text.js';

export const DEFAULT_FANOUT_CONCURRENCY = 32;

export type FanoutOutcome = 'applied' | 'rejected' | 'failed' | 'rolled_back' | 'no answer' | 'not sent';

export interface FanoutRow {
  deviceId: string;
  outcome: FanoutOutcome;
  code: string | null;
  jti: string | null;
  /** true when this run did not send anything because the device had already answered. */
  skipped: boolean;
}

export interface FanoutSummary {
  fanoutId: string;
  action: string;
  total: number;
  counts: Record<FanoutOutcome, number>;
  skipped: number;
  rows: FanoutRow[];
}

export interface FanoutOptions {
  storage: Storage;
  sender: CommandSender;
  waiters: AckWaiters;
  /** A new fan-out: what to send and to whom. */
  create?: { action: Action; params: Record<string, unknown>; selector: { all: true } | { userId: string }; ttlSeconds?: number };
  /** Or: the id of a fan-out to resume. */
  resumeId?: string;
  concurrency?: number;
  timeoutMs: number;
  onProgress?: (done: number, total: number) => void;
}

/** Devices a selector matches: not decommissioned, with an encryption key. */
export async function selectDevices(storage: Storage, selector: { all: true } | { userId: string }): Promise<string[]> {
  const devices = 'userId' in selector ? await storage.devices.list({ userId: selector.userId }) : await storage.devices.list();
  return devices.filter((d) => d.state !== 'decommissioned' && d.encryption).map((d) => d.id);
}

export async function runFanout(options: FanoutOptions): Promise<FanoutSummary> {
  const { storage, sender, waiters } = options;
  let fanout: FanoutRecord;
  if (options.resumeId !== undefined) {
    fanout = await storage.commands.getFanout(options.resumeId);
  } else if (options.create) {
    const { action, params, selector } = options.create;
    fanout = await storage.commands.createFanout(
      action,
      params,
      'userId' in selector ? { userId: selector.userId } : { all: true },
      await selectDevices(storage, selector),
    );
  } else {
    throw new Error('runFanout needs create or resumeId');
  }
  const ttlSeconds = options.create?.ttlSeconds;
  const previous = new Map<string, CommandRecord[]>();
  for (const c of await storage.commands.list({ fanoutId: fanout.id, limit: 1_000_000 })) {
    const list = previous.get(c.deviceId) ?? [];
    list.push(c);
    previous.set(c.deviceId, list);
  }
  const rows: FanoutRow[] = new Array<FanoutRow>(fanout.devices.length);
  let done = 0;
  let next = 0;
  const total = fanout.devices.length;
  options.onProgress?.(0, total);

  const one = async (deviceId: string): Promise<FanoutRow> => {
    const earlier = previous.get(deviceId) ?? [];
    const answered = earlier.find((c) => c.ackStatus !== null);
    if (answered) return { deviceId, outcome: answered.ackStatus as FanoutOutcome, code: answered.ackCode, jti: answered.jti, skipped: true };
    try {
      const pending = earlier.find((c) => c.expiresAt > storage.now() + 5000);
      let jti: string;
      if (pending) {
        const sealed = await storage.commands.sealed(pending.jti);
        if (sealed === undefined) throw new Error(`command ${pending.jti} lost its sealed text`);
        await sender.publish(deviceId, pending.jti, sealed);
        jti = pending.jti;
      } else {
        const c = await sender.send({
          deviceId,
          action: fanout.action as Action,
          params: fanout.params,
          fanoutId: fanout.id,
          ...(ttlSeconds ? { ttlSeconds } : {}),
        });
        jti = c.jti;
      }
      const acked = await waiters.wait(jti, options.timeoutMs);
      if (!acked?.ackStatus) return { deviceId, outcome: 'no answer', code: null, jti, skipped: false };
      return { deviceId, outcome: acked.ackStatus, code: acked.ackCode, jti, skipped: false };
    } catch (err) {
      const code = isRegistryError(err) || typeof (err as { code?: unknown }).code === 'string' ? String((err as { code: unknown }).code) : 'E_INTERNAL';
      return { deviceId, outcome: 'not sent', code, jti: null, skipped: false };
    }
  };

  const worker = async (): Promise<void> => {
    while (next < total) {
      const i = next++;
      rows[i] = await one(fanout.devices[i] as string);
      done++;
      options.onProgress?.(done, total);
    }
  };
  const concurrency = Math.max(1, Math.min(options.concurrency ?? DEFAULT_FANOUT_CONCURRENCY, 1024));
  await Promise.all(Array.from({ length: Math.min(concurrency, Math.max(total, 1)) }, worker));

  const counts: Record<FanoutOutcome, number> = { applied: 0, rejected: 0, failed: 0, rolled_back: 0, 'no answer': 0, 'not sent': 0 };
  for (const r of rows) counts[r.outcome]++;
  await storage.audit.append('fanout.run', null, { fanout_id: fanout.id, resumed: options.resumeId !== undefined, ...counts });
  return { fanoutId: fanout.id, action: fanout.action, total, counts, skipped: rows.filter((r) => r.skipped).length, rows };
}

/** The summary as a fixed-width table (one line per outcome, then the devices that did not apply). */
export function formatFanoutSummary(s: FanoutSummary): string {
  const lines = [`fan-out ${s.fanoutId}: ${s.action} to ${s.total} device(s)${s.skipped ? ` (${s.skipped} already answered, skipped)` : ''}`, ''];
  lines.push('outcome      devices');
  for (const k of ['applied', 'rejected', 'failed', 'rolled_back', 'no answer', 'not sent'] as const)
    lines.push(`${k.padEnd(12)} ${String(s.counts[k]).padStart(7)}`);
  const bad = s.rows.filter((r) => r.outcome !== 'applied');
  if (bad.length) {
    lines.push('', 'device                            outcome     code');
    for (const r of bad.slice(0, 50)) lines.push(`${r.deviceId.padEnd(33)} ${r.outcome.padEnd(11)} ${printable(r.code ?? '')}`);
    if (bad.length > 50) lines.push(`... and ${bad.length - 50} more`);
  }
  if (s.counts['no answer'] > 0 || s.counts['not sent'] > 0) lines.push('', `resume with: provision-server send --resume ${s.fanoutId}`);
  return `${lines.join('\n')}\n`;
}

/** A one-line progress bar for a TTY. */
export function progressBar(done: number, total: number, width = 30): string {
  const filled = total === 0 ? width : Math.round((done / total) * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total}`;
}
