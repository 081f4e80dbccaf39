/** Releases as JSON (HTTP API, --json) and as a table (the CLI). */
import type { ReleaseRecord } from '../storage/records.js';
import { table } from '../terminal-text.js';
import { manifestOf } from './store.js';

export function releaseView(r: ReleaseRecord, options: { manifest?: boolean } = {}): Record<string, unknown> {
  const m = manifestOf(r);
  return {
    version: r.version,
    arch: r.arch,
    bytes: r.bytes,
    sha256: r.sha256,
    chunks: m.chunks.count,
    node: m.node,
    gpio: m.gpio,
    snapshot: m.snapshot,
    unpacked_bytes: m.artifact.unpacked_bytes,
    created_at: m.created_at,
    added_at: new Date(r.addedAt).toISOString(),
    ...(options.manifest ? { manifest: m, manifest_jws: r.manifest, dir: r.dir } : {}),
  };
}

const mib = (n: number): string => `${(n / 1024 / 1024).toFixed(1)} MiB`;

export function releaseTable(rs: readonly ReleaseRecord[]): string {
  const rows = [['VERSION', 'ARCH', 'SIZE', 'NODE', 'SHIPS NODE', 'SNAPSHOT', 'SHA-256', 'ADDED']];
  for (const r of rs) {
    const m = manifestOf(r);
    rows.push([
      r.version,
      r.arch,
      mib(r.bytes),
      `${m.node.version} (abi ${m.node.abi})`,
      m.node.ships ? 'yes' : 'no',
      m.snapshot ? 'yes' : 'no',
      r.sha256.slice(0, 16),
      new Date(r.addedAt).toISOString(),
    ]);
  }
  return table(rows);
}
