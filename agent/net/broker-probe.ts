/**
 * The self-test's broker check for a device whose MQTT identity is its client
 * certificate (the production broker derives the user name AND the client id
 * from it). Any MQTT CONNECT with that certificate would take the running
 * agent's client id: the broker would disconnect the agent and, with a clean
 * session, throw away the commands it keeps for it. So this check stops at
 * TLS: the broker's certificate verified against the pinned CA, and the
 * device's client certificate accepted by the broker. It opens no MQTT
 * session.
 *
 * TLS 1.3 completes the handshake on the client's side before the server has
 * checked the client certificate; a server that refuses it sends its alert
 * right after. The probe therefore waits `settleMs` after the handshake for
 * such an alert (or a close) before it calls the certificate accepted.
 */
import { isIP } from 'node:net';
import { connect as tlsConnect } from 'node:tls';

export interface TlsProbeOptions {
  /** mqtts:// URL of the broker. */
  url: string;
  /** PEM of the CA(s) to pin; absent: the system's CAs. */
  ca?: string | Buffer;
  cert: Buffer;
  key: Buffer;
  timeoutMs: number;
  /** How long to wait for a refusal after the handshake (default 750 ms). */
  settleMs?: number;
}

export interface TlsProbeResult {
  ok: boolean;
  reason: string;
  fix?: string;
}

export function probeTlsIdentity(o: TlsProbeOptions): Promise<TlsProbeResult> {
  const u = new URL(o.url);
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = Number(u.port || 8883);
  return new Promise((resolve) => {
    let done = false;
    let settle: NodeJS.Timeout | undefined;
    const socket = tlsConnect({
      host,
      port,
      ...(isIP(host) === 0 ? { servername: host } : {}),
      ...(o.ca !== undefined ? { ca: o.ca } : {}),
      cert: o.cert,
      key: o.key,
      rejectUnauthorized: true,
    });
    const finish = (r: TlsProbeResult): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      clearTimeout(settle);
      socket.destroy();
      resolve(r);
    };
    const timer = setTimeout(
      () =>
        finish({ ok: false, reason: `${o.url}: no TLS answer within ${o.timeoutMs / 1000} s`, fix: 'check the network, the broker address and the firewall' }),
      o.timeoutMs,
    );
    socket.once('secureConnect', () => {
      settle = setTimeout(
        () =>
          finish({
            ok: true,
            reason: `${o.url}: TLS verified against the pinned CA, client certificate accepted (no MQTT session opened: it would take over the running agent's)`,
          }),
        o.settleMs ?? 750,
      );
    });
    socket.once('error', (err: Error) => finish({ ok: false, reason: `${o.url}: ${err.message}`, fix: brokerFailureFix(err.message) }));
    socket.once('close', () =>
      finish({
        ok: false,
        reason: `${o.url}: the broker closed the TLS connection during the handshake`,
        fix: 'the broker refused the client certificate: check broker.cert/broker.key and the CA the broker trusts for devices',
      }),
    );
  });
}

/** How to fix a failed broker connection, from its error message (the self-test's broker checks). */
export function brokerFailureFix(message: string): string {
  if (/alert|certificate required|unknown ca|bad certificate|certificate expired|certificate revoked/i.test(message)) {
    return 'the broker refused the client certificate: check broker.cert/broker.key, their validity dates and the CA the broker trusts for devices';
  }
  if (/self.signed|unable to verify|altname|hostname|certificate/i.test(message)) {
    return 'the broker certificate does not verify against broker.ca: copy the right CA, check the host name';
  }
  if (/not authori[sz]ed|bad user/i.test(message)) {
    return 'the broker refused the credentials: check broker.cert/broker.key and the broker ACL';
  }
  return 'check that the broker runs and is reachable';
}
