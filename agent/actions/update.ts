/**
 * `update`: new settings as a transaction. Validated (by the protocol layer,
 * plus the GPIO pin set here), saved atomically with the command's seq, then
 * applied (GPIO pins, sensor enable). A broker change is applied after the
 * PUBACK: the agent connects to the new broker with the same identity and,
 * if it cannot within `rollback_timeout_s` (default 60), rolls the whole
 * update back, reconnects to the previous broker and sends a `failed` ack
 * (E_BROKER_ROLLBACK) saying so; otherwise the `applied` ack goes out on the
 * new broker. A crash during the switch resumes it at the next start.
 */
import type { CommandClaims, UpdateParams } from '../../protocol/index.js';
import type { ActionContext, ActionDescriptor } from './descriptor.js';
import { checkBrokerUrl } from '../config.js';
import type { GpioConfig, GpioPins } from '../gpio/index.js';
import { ActionRefused, applied, type Outcome } from './outcome.js';
import type { AgentRuntime } from '../runtime.js';
import type { AgentState, PendingBroker, Settings } from '../store/state.js';

export const DEFAULT_ROLLBACK_TIMEOUT_S = 60;

export function mergeSettings(prev: Settings, p: UpdateParams): Settings {
  const next: Settings = structuredClone(prev);
  if (p.sensor) next.sensor = { ...prev.sensor, ...p.sensor };
  if (p.reporting) next.reporting = { ...prev.reporting, ...p.reporting };
  if (p.gpio) next.gpio = { ...prev.gpio, ...p.gpio };
  if (p.broker) next.broker = { ...p.broker };
  return next;
}

/** The pins in effect: the config file's (`gpio`), overridden by settings from `update`. */
export function effectivePins(g: GpioConfig, settings: Settings): GpioPins {
  const s = settings.gpio ?? {};
  return {
    status_led: s.status_led !== undefined ? s.status_led : (g.status_led ?? null),
    sensor_enable: s.sensor_enable !== undefined ? s.sensor_enable : (g.sensor_enable ?? null),
    reset_button: s.reset_button !== undefined ? s.reset_button : (g.reset_button ?? null),
  };
}

export function sensorShouldBeOn(state: AgentState): boolean {
  return state.provisioned && state.settings.sensor?.enabled !== false;
}

/** Applies the GPIO side of the settings (pins, sensor enable). Never throws: GPIO failures go to the log. */
export async function applyGpioSettings(rt: AgentRuntime, state: AgentState): Promise<void> {
  try {
    await rt.io.reconfigure(effectivePins(rt.config.gpio, state.settings));
  } catch (err) {
    rt.log.error('GPIO reconfiguration failed', { reason: (err as Error).message });
  }
  await rt.io.setSensorEnabled(sensorShouldBeOn(state));
}

/** What finishing a broker change needs: switching the session (ActionContext.switchBroker). */
export type UpdateControl = Pick<ActionContext, 'switchBroker'>;

/**
 * The ack is the action's (`ack: 'action'`): after the PUBACK, at once when
 * the broker stays, else by finishBrokerChange on whichever broker is kept.
 */
export const updateAction: ActionDescriptor<'update'> = {
  action: 'update',
  needsProvisioned: true,
  runsHook: true,
  ack: 'action',
  retiresPreviousKey: true,
  savesFailedChange: false,
  apply: applyUpdate,
};

export async function applyUpdate(ctl: ActionContext, claims: CommandClaims<'update'>): Promise<Outcome> {
  const { rt } = ctl;
  const p: UpdateParams = claims.params;
  const before = rt.store.state;
  const next = mergeSettings(before.settings, p);
  const pins = Object.values(effectivePins(rt.config.gpio, next)).filter((v): v is number => typeof v === 'number');
  if (new Set(pins).size !== pins.length) throw new ActionRefused('E_PARAMS', 'params.gpio: the resulting pins use the same GPIO twice');
  if (p.broker) {
    const problems: string[] = [];
    checkBrokerUrl(p.broker.url, rt.config.broker.allow_insecure, problems, 'params.broker.url');
    if (problems.length > 0) throw new ActionRefused('E_PARAMS', problems.join('; '));
  }
  const changed = Object.keys(p)
    .filter((k) => k !== 'rollback_timeout_s')
    .join(', ');
  const pending: PendingBroker | null = p.broker
    ? {
        jti: claims.jti,
        seq: claims.seq,
        previous: before.settings.broker ?? null,
        next: { ...p.broker },
        rollback_timeout_s: p.rollback_timeout_s ?? DEFAULT_ROLLBACK_TIMEOUT_S,
        previous_user_id: before.user_id,
        previous_settings: structuredClone(before.settings),
      }
    : null;
  const detail = `updated ${changed}`;
  return applied(detail, {
    mutate: (d) => {
      d.settings = next;
      if (p.user_id !== undefined) d.user_id = p.user_id;
      d.pending_broker = pending;
    },
    afterAck: async () => {
      if (!pending) {
        const token = await rt.sealAck({ ref: claims.jti, seq: claims.seq, status: 'applied', code: 'OK', detail });
        rt.publishAck(token, { ref: claims.jti, status: 'applied', code: 'OK' });
      }
      await applyGpioSettings(rt, rt.store.state);
      if (pending) await finishBrokerChange(rt, pending, ctl);
    },
  });
}

/**
 * Connects to the new broker; on success clears the marker and acks `applied`
 * there; on timeout restores the user and settings from before the update
 * (kept in the marker, so this holds after a crash too), reconnects to the
 * previous broker and acks `failed`.
 */
export async function finishBrokerChange(rt: AgentRuntime, pending: PendingBroker, ctl: UpdateControl): Promise<void> {
  const timeoutMs = pending.rollback_timeout_s * 1000;
  rt.log.info('switching broker', { to: pending.next.url, rollback_after_s: pending.rollback_timeout_s });
  const ok = await ctl.switchBroker(pending.next, timeoutMs);
  if (ok) {
    await rt.store.update((d) => {
      d.pending_broker = null;
    });
    const token = await rt.sealAck({
      ref: pending.jti,
      seq: pending.seq,
      status: 'applied',
      code: 'OK',
      detail: `updated; now connected to ${pending.next.url}`,
    });
    rt.publishAck(token, { ref: pending.jti, status: 'applied' });
    return;
  }
  const detail = `could not connect to ${pending.next.url} within ${pending.rollback_timeout_s} s; update rolled back to ${pending.previous?.url ?? rt.config.broker.url}`;
  rt.log.error('broker change rolled back', { to: pending.next.url, back_to: pending.previous?.url ?? rt.config.broker.url });
  await rt.store.update((d) => {
    if (pending.previous_settings !== undefined) {
      d.settings = structuredClone(pending.previous_settings);
      d.user_id = pending.previous_user_id ?? null;
    } else if (pending.previous) d.settings.broker = pending.previous;
    else delete d.settings.broker;
    d.pending_broker = null;
    for (const r of [...d.recent, ...(d.last_command ? [d.last_command] : [])]) {
      if (r.jti === pending.jti) Object.assign(r, { status: 'failed', code: 'E_BROKER_ROLLBACK', detail });
    }
  });
  await applyGpioSettings(rt, rt.store.state);
  await ctl.switchBroker(rt.store.state.settings.broker, 0);
  const token = await rt.sealAck({ ref: pending.jti, seq: pending.seq, status: 'failed', code: 'E_BROKER_ROLLBACK', detail });
  rt.publishAck(token, { ref: pending.jti, status: 'failed' });
}
