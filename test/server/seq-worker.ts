/** Worker for the concurrent-seq test: allocates seqs from its own registry connection. */
import { parentPort, workerData } from 'node:worker_threads';
import { Registry } from '../../server/registry/registry.js';

const { path, deviceId, count } = workerData as { path: string; deviceId: string; count: number };
const registry = Registry.open(path);
const seqs: number[] = [];
for (let i = 0; i < count; i++) seqs.push(registry.allocateSeq(deviceId).seq);
registry.close();
parentPort?.postMessage(seqs);
