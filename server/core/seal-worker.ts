/**
 * A sealing worker thread (see seal-pool.ts): seals the commands it is sent
 * with the keys sent along, and answers with the token and claims, or with
 * the error's code and message.
 */
import { parentPort } from 'node:worker_threads';
import { isProtocolError, sealCommand } from '../../protocol/index.js';
import type { SealRequest, SealResponse } from './seal-pool.js';

const port = parentPort;
if (!port) throw new Error('seal-worker runs as a worker thread only');
port.on('message', (req: SealRequest) => {
  sealCommand(req.input, req.keys).then(
    ({ token, claims }) => port.postMessage({ id: req.id, token, claims } satisfies SealResponse),
    (err: unknown) =>
      port.postMessage({
        id: req.id,
        error: { code: isProtocolError(err) ? err.code : null, message: err instanceof Error ? err.message : String(err) },
      } satisfies SealResponse),
  );
});
