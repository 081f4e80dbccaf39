/**
 * systemd integration: readiness and watchdog pings through the
 * `systemd-notify` tool (Node has no unix datagram sockets). Only active when
 * NOTIFY_SOCKET is set; the unit needs `NotifyAccess=all` (the message comes
 * from a child process) and `Type=notify`. The watchdog interval is half of
 * WATCHDOG_USEC; a ping is sent only when `healthy()` says so.
 */
import { execFile } from 'node:child_process';
import type { Logger } from '../../lib/log.js';

export interface SystemdNotifier {
  readonly enabled: boolean;
  ready(status?: string): void;
  status(text: string): void;
  stopping(): void;
  /** Starts watchdog pings (when WATCHDOG_USEC is set); `healthy` is asked before each. */
  startWatchdog(healthy: () => boolean): void;
  close(): void;
}

export function createSystemdNotifier(log: Logger, env: NodeJS.ProcessEnv = process.env, tool = 'systemd-notify'): SystemdNotifier {
  const enabled = typeof env.NOTIFY_SOCKET === 'string' && env.NOTIFY_SOCKET !== '';
  let timer: NodeJS.Timeout | undefined;
  let warned = false;
  // One systemd-notify at a time, in order: systemd shows the last STATUS= it
  // received, so two children racing could leave an older status on show.
  // What waits is bounded: a newer STATUS= replaces a queued one and a queued
  // ping makes another redundant (a fast retry loop queues no children).
  const queue: string[][] = [];
  let busy = false;
  const only = (a: string[], prefix: string): boolean => a.length === 1 && a[0]!.startsWith(prefix);
  const exec = (assignments: string[], then: () => void): void => {
    execFile(tool, [`--pid=${process.pid}`, ...assignments], { timeout: 5000, env }, (err) => {
      if (err && !warned) {
        warned = true;
        log.warn('systemd-notify failed; readiness and watchdog pings are not reaching systemd', { reason: err.message });
      }
      then();
    });
  };
  const pump = (): void => {
    const next = queue.shift();
    busy = next !== undefined;
    if (next) exec(next, pump);
  };
  const send = (assignments: string[]): void => {
    if (!enabled) return;
    for (const kind of ['STATUS=', 'WATCHDOG=']) {
      if (!only(assignments, kind)) continue;
      const i = queue.findIndex((q) => only(q, kind));
      if (i >= 0) {
        queue[i] = assignments;
        return;
      }
    }
    queue.push(assignments);
    if (!busy) pump();
  };
  return {
    enabled,
    ready: (status) => send(['READY=1', ...(status ? [`STATUS=${status}`] : [])]),
    status: (text) => send([`STATUS=${text}`]),
    // Not queued: the process may exit right after.
    stopping: () => {
      if (enabled) exec(['STOPPING=1'], () => undefined);
    },
    startWatchdog(healthy) {
      const usec = Number(env.WATCHDOG_USEC);
      const pid = env.WATCHDOG_PID;
      if (!enabled || !Number.isFinite(usec) || usec <= 0 || (pid !== undefined && pid !== String(process.pid))) return;
      // Half the timeout (a floor of 500 ms would miss a WatchdogSec under 1 s).
      const every = Math.max(50, Math.floor(usec / 2000));
      timer = setInterval(() => {
        if (healthy()) send(['WATCHDOG=1']);
        else log.warn('unhealthy: watchdog ping withheld');
      }, every);
      timer.unref();
    },
    close() {
      clearInterval(timer);
    },
  };
}
