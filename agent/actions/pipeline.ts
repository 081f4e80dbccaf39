/**
 * The command pipeline of docs/DESIGN.md, in order: the protocol layer's checks
 * (size, shape, algorithms, kid, decrypt, pinned signature, audience, issuer,
 * times), replay (`seq` strictly greater than the last applied, `jti` not in
 * the recent set), `params`, then the hook, apply, persist (state, seq and
 * jti in one atomic write), and only then the PUBACK (when `handle`
 * resolves) and the ack (the returned follow-up).
 *
 * Refusals before the signature verified are logged (one line, rate-limited)
 * and dropped without an ack. Authenticated refusals get a `rejected` ack
 * with the code; when the command is addressed to this device by our server
 * (and not already below the seq floor), the refusal is saved first, like an
 * applied command: a decided command is final. A redelivered command that
 * was decided before (applied, failed or refused) is re-acked as a duplicate
 * with its original status and code, never applied.
 *
 * What differs between actions (a provisioned device needed, a hook, who acks,
 * ...) is read from their descriptors (descriptor.ts, index.ts), never from
 * their names.
 */
import { checkReplay, isAction, isProtocolError, openCommand, type OpenedCommand } from '../../protocol/index.js';
import { applyCommand, type ActionContext, type ActionDescriptors } from './descriptor.js';
import { runHook } from './hooks.js';
import { ACTION_DESCRIPTORS } from './index.js';
import { ActionRefused, type Outcome } from './outcome.js';
import { undoRotationKeys } from './rotate.js';
import type { AgentRuntime } from '../runtime.js';
import { recordCommand, recordRefusal, type RecentCommand } from '../store/state.js';

/** Work to run after the PUBACK (publishing the ack, side effects). */
export type FollowUp = () => Promise<void>;

const GARBAGE_LOG_INTERVAL_MS = 10_000;

export interface CommandEvent {
  jti: string;
  seq: number;
  action: string;
  status: RecentCommand['status'];
  code: string;
  detail: string;
  duplicate: boolean;
}

export class Pipeline {
  #lastGarbageLog = 0;
  #suppressed = 0;

  constructor(
    private readonly ctx: ActionContext,
    private readonly onCommand: (e: CommandEvent) => void = () => undefined,
    private readonly actions: ActionDescriptors = ACTION_DESCRIPTORS,
  ) {}

  private get rt(): AgentRuntime {
    return this.ctx.rt;
  }

  /** Handles one message; resolves when it may be PUBACKed; rejects when it must not be (redelivery). */
  async handle(topic: string, payload: Buffer): Promise<FollowUp | undefined> {
    const rt = this.rt;
    if (topic !== rt.topics.command) {
      this.#garbage('message on an unexpected topic', topic);
      return undefined;
    }
    if (rt.decryption.size === 0) {
      this.#garbage('command received but this device has no keys', 'E_KID');
      return undefined;
    }
    let opened: OpenedCommand;
    try {
      const state = rt.store.state;
      opened = await openCommand(payload, {
        deviceId: rt.deviceId,
        topicDeviceId: rt.deviceId,
        serverId: rt.config.server_id,
        decryption: rt.decryption,
        verification: rt.trust.verification,
        clock: rt.clock,
        replay: { check: (seq, jti) => checkReplay({ lastSeq: state.last_seq, recentJtis: state.recent.map((r) => r.jti) }, seq, jti) },
      });
    } catch (err) {
      if (!isProtocolError(err) || err.refused === undefined) {
        this.#garbage(err instanceof Error ? err.message : String(err), isProtocolError(err) ? err.code : 'E_INTERNAL');
        return undefined;
      }
      const ref = err.refused;
      // Decided before (applied or refused): the same answer again, whatever the clock says now.
      const known = ref.jti === undefined ? undefined : rt.store.recent(ref.jti);
      if (known) return this.#duplicate(known);
      rt.log.warn('command refused', { code: err.code, action: ref.action, seq: ref.seq, jti: ref.jti, reason: err.message });
      if (ref.jti === undefined) return undefined;
      // Recorded only when it is a command from our server to this device that the seq floor does not
      // already cover: a replay, or a message addressed elsewhere, must not take room in the window.
      const record = ref.addressed === true && err.code !== 'E_REPLAY' && ref.seq !== undefined && ref.seq > rt.store.state.last_seq;
      return this.#reject(ref.jti, ref.seq ?? 0, ref.action ?? '?', err.code, err.message, record);
    }

    const c = opened.claims;
    const log = rt.log.child({ action: c.action, seq: c.seq, jti: c.jti });
    log.info('command verified');
    const state = rt.store.state;
    const action = this.actions[c.action];
    if (action.needsProvisioned && !state.provisioned) {
      return this.#reject(c.jti, c.seq, c.action, 'E_NOT_PROVISIONED', `${c.action} needs a provisioned device; this one is not (send request first)`, true);
    }

    let outcome: Outcome;
    try {
      const hook = action.runsHook
        ? await runHook({
            hooksDir: rt.config.hooks_dir,
            action: c.action,
            params: c.params,
            timeoutMs: rt.config.hook_timeout_s * 1000,
            env: { SENSOR_AGENT_DEVICE_ID: rt.deviceId, SENSOR_AGENT_ACTION: c.action, SENSOR_AGENT_SEQ: String(c.seq) },
          })
        : { ran: false, ok: true, detail: '' };
      if (hook.ran) log.info('hook ran', { ok: hook.ok, detail: hook.detail });
      outcome = hook.ok ? await applyCommand(this.actions, this.ctx, c) : { status: 'failed', code: hook.code ?? 'E_HOOK', detail: hook.detail };
    } catch (err) {
      if (err instanceof ActionRefused) return this.#reject(c.jti, c.seq, c.action, err.code, err.message, true);
      log.error('action failed', { reason: (err as Error).message });
      outcome = { status: 'failed', code: 'E_APPLY', detail: `${c.action} failed: ${(err as Error).message}` };
    }

    const rec: RecentCommand = {
      jti: c.jti,
      seq: c.seq,
      action: c.action,
      status: outcome.status,
      code: outcome.code,
      detail: outcome.detail,
      at: Math.floor(Date.now() / 1000),
    };
    const retirePrevious =
      outcome.status === 'applied' &&
      action.retiresPreviousKey &&
      opened.decryptKid === rt.keystore.encryptionKey?.kid &&
      rt.keystore.previousEncryptionKey !== undefined;
    // Persist before the PUBACK: if this throws, no PUBACK, and the redelivery finds the old state.
    await rt.store.update((d) => {
      if (outcome.status === 'applied') outcome.mutate?.(d);
      else if (action.savesFailedChange) outcome.mutate?.(d); // rotate: clears a failed rotation's marker
      recordCommand(d, rec);
      if (retirePrevious) d.keys.previous_encryption = null;
    });
    if (retirePrevious) {
      await rt.keystore.remove('encryption.previous');
      await rt.refreshDecryption();
      log.info('previous encryption key removed: the server uses the new one');
    }
    if (outcome.status === 'applied') await outcome.beforePuback?.();
    await rt.afterPersist?.(c.action);
    log.info('command processed', { status: outcome.status, code: outcome.code, detail: outcome.detail });
    this.onCommand({ ...rec, duplicate: false });

    return async () => {
      if (action.ack === 'pipeline' || outcome.status !== 'applied') {
        const token =
          outcome.ackToken ??
          (await rt.sealAck({
            ref: c.jti,
            seq: c.seq,
            status: outcome.status,
            code: outcome.code,
            detail: outcome.detail,
            ...(outcome.result ? { result: outcome.result } : {}),
          }));
        rt.publishAck(token, { ref: c.jti, status: outcome.status, code: outcome.code });
      }
      if (outcome.status === 'applied') await outcome.afterAck?.();
    };
  }

  #duplicate(rec: RecentCommand): FollowUp | undefined {
    const rt = this.rt;
    const descriptor = isAction(rec.action) ? this.actions[rec.action] : undefined;
    if (descriptor?.inProgress?.(rt.store.state, rec.jti) === true) {
      rt.log.info('duplicate command: still in progress, answered when it is decided', { jti: rec.jti, seq: rec.seq, action: rec.action });
      return undefined;
    }
    rt.log.info('duplicate command: already processed, acked again', { jti: rec.jti, seq: rec.seq, action: rec.action, status: rec.status });
    this.onCommand({ ...rec, duplicate: true });
    return async () => {
      const stored = rt.store.state.rotate_ack;
      const token =
        stored?.jti === rec.jti
          ? stored.token
          : await rt.sealAck({
              ref: rec.jti,
              seq: rec.seq,
              status: rec.status,
              code: rec.code,
              detail: `duplicate: already ${rec.status} at seq ${rec.seq}; ${rec.detail}`,
            });
      rt.publishAck(token, { ref: rec.jti, status: rec.status, duplicate: 'yes' });
    };
  }

  /**
   * A `rejected` ack. With `record`, the refusal is first saved (before the
   * PUBACK, like an applied command): the command is then final, and a
   * redelivery, even after a restart with another clock, gets the same answer.
   */
  async #reject(jti: string, seq: number, action: string, code: string, detail: string, record: boolean): Promise<FollowUp | undefined> {
    const rt = this.rt;
    // A rotation interrupted between its key writes whose command is refused now is never redone: undone.
    const rotation = rt.store.state.pending_rotation?.jti === jti ? rt.store.state.pending_rotation : null;
    if (rotation) await undoRotationKeys(rt, rotation);
    if (record || rotation) {
      const rec: RecentCommand = { jti, seq, action, status: 'rejected', code, detail, at: Math.floor(Date.now() / 1000) };
      await rt.store.update((d) => {
        if (record) recordRefusal(d, rec);
        if (rotation) {
          d.pending_rotation = null;
          d.keys.previous_encryption = rt.keystore.previousEncryptionKey?.kid ?? null;
        }
      });
      if (record) await rt.afterPersist?.(action);
    }
    this.onCommand({ jti, seq, action, status: 'rejected', code, detail, duplicate: false });
    if (!rt.keystore.signingKey) return undefined;
    return async () => {
      const token = await rt.sealAck({ ref: jti, seq, status: 'rejected', code, detail });
      rt.publishAck(token, { ref: jti, status: 'rejected', code });
    };
  }

  /** Unauthenticated input: one log line, at most every 10 s (with a count of those suppressed). */
  #garbage(reason: string, code: string): void {
    const now = Date.now();
    if (now - this.#lastGarbageLog < GARBAGE_LOG_INTERVAL_MS) {
      this.#suppressed += 1;
      return;
    }
    this.rt.log.warn('unauthenticated message dropped', { code, reason: reason.slice(0, 200), suppressed: this.#suppressed || undefined });
    this.#lastGarbageLog = now;
    this.#suppressed = 0;
  }
}
