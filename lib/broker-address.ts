/**
 * An `mqtt://`/`mqtts://` broker URL as the host, port and protocol MQTT.js
 * connects to. Given a URL string, MQTT.js parses it with the legacy
 * `url.parse()`, which Node 24 and later deprecate (DEP0169) with a warning
 * on every start of the bundled agent (Node silences it only for code under
 * node_modules). The URL is parsed here with WHATWG `URL` instead, to the
 * same fields MQTT.js would take from it.
 */
import { CodedError } from '../protocol/index.js';

export interface BrokerAddress {
  protocol: 'mqtt' | 'mqtts';
  /** Host name or IP address; an IPv6 address without its brackets, as `net.connect` wants it. */
  host: string;
  /** Absent: MQTT.js's default for the protocol (1883, 8883). */
  port?: number;
}

export function brokerAddress(url: string): BrokerAddress {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new CodedError('E_USAGE', `broker URL '${url}' is not a URL (want mqtt://HOST[:PORT] or mqtts://HOST[:PORT])`);
  }
  const protocol = u.protocol.replace(/:$/, '');
  if (protocol !== 'mqtt' && protocol !== 'mqtts') throw new CodedError('E_USAGE', `broker URL '${url}' must be mqtt:// or mqtts://`);
  if (u.hostname === '') throw new CodedError('E_USAGE', `broker URL '${url}' has no host`);
  // mqtt: is not a WHATWG "special" scheme, so its host keeps its case: lower it, as url.parse() did.
  const hostname = u.hostname.toLowerCase();
  const host = hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
  return { protocol, host, ...(u.port !== '' ? { port: Number(u.port) } : {}) };
}
