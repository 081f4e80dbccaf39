/**
 * The running agent's version, read in this one place: the bundle's
 * build-time constant (esbuild define `SENSOR_AGENT_VERSION`, set by
 * build-agent `--agent-version`), else package.json's version (a development
 * tree running from dist/, where the bundle's define is absent).
 */
import { packageVersion } from '../lib/version.js';

declare const SENSOR_AGENT_VERSION: string | undefined;

let cached: string | undefined;

export function agentVersion(): string {
  cached ??= typeof SENSOR_AGENT_VERSION === 'string' && SENSOR_AGENT_VERSION !== '' ? SENSOR_AGENT_VERSION : packageVersion();
  return cached;
}
