/**
 * aedes in process on a free loopback port: the zero-install broker of the demo
 * (and of the server's tests). aedes 1.x speaks MQTT 3.1.1 and has no shared
 * subscriptions. It is a devDependency: only the demo loads this module.
 */
import { createServer, type AddressInfo, type Server } from 'node:net';
import { Aedes } from 'aedes';

export interface EmbeddedBroker {
  url: string;
  port: number;
  close(): Promise<void>;
}

export async function startEmbeddedBroker(host = '127.0.0.1'): Promise<EmbeddedBroker> {
  const broker = await Aedes.createBroker();
  const server: Server = createServer(broker.handle);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  let closed = false;
  return {
    url: `mqtt://${host}:${port}`,
    port,
    close: async () => {
      if (closed) return;
      closed = true;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        // connected clients keep the listener open: aedes.close ends them
        broker.close(() => undefined);
      });
    },
  };
}
