/** Worker for the concurrent-seq test: allocates seqs from its own registry connection. */
import { parentPort, workerData } from 'node:worker_threads';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';

const { path, deviceId, count } = workerData as { path: string; deviceId: string; count: number };
const storage = openSqliteStorage(path);
const seqs: number[] = [];
for (let i = 0; i < count; i++) seqs.push((await storage.seq.allocate(deviceId)).seq);
await storage.close();
parentPort?.postMessage(seqs);
