/**
 * A stream of sealed commands to one agent as the server sends them: one
 * command in flight at a time, each sealed once (one jti, one seq) and
 * re-published unchanged until its ack arrives. Faults happen around it; the
 * counts at the end say whether every command was applied exactly once, in
 * order.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestSender } from '../helpers/agent-process.js';

export interface StreamCounts {
  /** Distinct commands sealed and sent. */
  sent: number;
  /** Publications including re-publications of the same sealed command. */
  published: number;
  /** Commands with an `applied` ack. */
  applied: number;
  /** Acks for a redelivered or re-published command the agent had already applied (re-acked, not re-applied). */
  duplicatesRefused: number;
  /** Commands never applied. */
  lost: number;
}

export interface StreamResult {
  counts: StreamCounts;
  sent: { jti: string; seq: number; interval: number }[];
  problems: string[];
}

export interface StreamOptions {
  /** Stop sending new commands once this returns true (checked before each command). */
  done: (sentSoFar: number) => boolean;
  /** Re-publish the same sealed command after this long without its ack. */
  retryMs: number;
  /** Give up on one command after this long (counts it lost). */
  giveUpMs: number;
}

/** Sends `update` commands whose sample_interval_s is 1, 2, 3...: each state write is distinguishable. */
export async function runStream(sender: TestSender, options: StreamOptions): Promise<StreamResult> {
  const sent: StreamResult['sent'] = [];
  let published = 0;
  const problems: string[] = [];
  for (let i = 1; !options.done(sent.length); i++) {
    const interval = 1 + (i % 86_000);
    const c = await sender.seal('update', { sensor: { sample_interval_s: interval } });
    sent.push({ jti: c.jti, seq: c.seq, interval });
    const start = Date.now();
    let acked = false;
    while (!acked && Date.now() - start < options.giveUpMs) {
      published++;
      // Not awaited: while the broker is down, mqtt.js holds it; the ack wait below decides.
      sender.publish(c.token).catch(() => undefined);
      try {
        await sender.waitAck((a) => a.ref === c.jti && a.status === 'applied', options.retryMs);
        acked = true;
      } catch {
        // no ack yet: publish the same sealed command again
      }
    }
    if (!acked) problems.push(`command seq ${c.seq} (${c.jti}) got no applied ack within ${options.giveUpMs} ms`);
  }
  const counts = countAcks(sender, sent, published);
  return { counts, sent, problems };
}

function countAcks(sender: TestSender, sent: StreamResult['sent'], published: number): StreamCounts {
  const mine = new Set(sent.map((s) => s.jti));
  let duplicatesRefused = 0;
  const applied = new Set<string>();
  for (const { claims } of sender.acks) {
    if (!mine.has(claims.ref)) continue;
    const duplicate = claims.detail.startsWith('duplicate') || (claims.status === 'rejected' && claims.code === 'E_REPLAY');
    if (duplicate) duplicatesRefused++;
    if (claims.status === 'applied') applied.add(claims.ref);
  }
  return { sent: sent.length, published, applied: applied.size, duplicatesRefused, lost: sent.length - applied.size };
}

/** Checks the agent's own record: each command applied exactly once, in the order sent, and the settings of the last. */
export async function checkAppliedOnceInOrder(stateDir: string, sender: TestSender, sent: StreamResult['sent']): Promise<string[]> {
  const problems: string[] = [];
  const state = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')) as {
    last_seq: number;
    recent: { jti: string; seq: number; status: string }[];
    settings: { sensor?: { sample_interval_s?: number } };
  };
  const mine = new Set(sent.map((s) => s.jti));
  const recent = state.recent.filter((r) => mine.has(r.jti));
  const seenOnce = new Map<string, number>();
  for (const r of recent) seenOnce.set(r.jti, (seenOnce.get(r.jti) ?? 0) + 1);
  for (const [jti, n] of seenOnce) if (n !== 1) problems.push(`command ${jti} recorded ${n} times in the agent's state`);
  const order = recent.map((r) => r.jti);
  const expected = sent.map((s) => s.jti).slice(-order.length);
  if (JSON.stringify(order) !== JSON.stringify(expected)) problems.push(`applied order differs from sent order: ${order.length} recorded`);
  for (const r of recent) if (r.status !== 'applied') problems.push(`command ${r.jti} recorded as ${r.status}`);
  const last = sent[sent.length - 1];
  if (last && state.last_seq !== last.seq) problems.push(`last_seq ${state.last_seq}, expected ${last.seq}`);
  if (last && state.settings.sensor?.sample_interval_s !== last.interval) problems.push(`settings are not those of the last command`);
  // Applied acks that were not marked duplicate: at most one per command.
  const firsts = new Map<string, number>();
  for (const { claims } of sender.acks) {
    if (mine.has(claims.ref) && claims.status === 'applied' && !claims.detail.startsWith('duplicate'))
      firsts.set(claims.ref, (firsts.get(claims.ref) ?? 0) + 1);
  }
  for (const [jti, n] of firsts) if (n > 1) problems.push(`command ${jti} acked as freshly applied ${n} times`);
  return problems;
}
