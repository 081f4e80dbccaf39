/** Node.js versions and ABIs, shared by provisioning/flash and provisioning/build-agent. */

/** package.json's engines.node floor. */
export const MIN_NODE_VERSION = '20.19.0';

/** NODE_MODULE_VERSION (process.versions.modules) of each Node major the agent can run on. */
export const NODE_ABI_BY_MAJOR: Readonly<Record<number, string>> = { 20: '115', 21: '120', 22: '127', 23: '131', 24: '137', 25: '141', 26: '147' };

export function parseNodeVersion(v: string): [number, number, number] | undefined {
  const m = /^v?(\d+)\.(\d+)\.(\d+)$/.exec(v.trim());
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

export function compareVersions(a: [number, number, number], b: [number, number, number]): number {
  for (let i = 0; i < 3; i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) - (b[i] ?? 0);
  return 0;
}
