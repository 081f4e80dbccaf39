/** A server data directory and a running `serve` on an embedded broker, for the server's tests. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initDataDir } from '../../server/data-dir.js';
import { startProvisionServer, type RunningServer, type ServeOptions } from '../../server/service.js';
import type { InboundResult } from '../../server/core/inbound.js';
import { SimFleet, startEmbeddedBroker, type EmbeddedBroker } from './sim-fleet.js';

export interface Fixture {
  dir: string;
  dataDir: string;
  broker: EmbeddedBroker;
  server: RunningServer;
  fleet: SimFleet;
  inbound: InboundResult[];
  close(): Promise<void>;
}

export async function startFixture(options: Partial<ServeOptions> = {}): Promise<Fixture> {
  const dir = await mkdtemp(join(tmpdir(), 'provision-server-test-'));
  const dataDir = join(dir, 'data');
  const broker = await startEmbeddedBroker();
  await initDataDir(dataDir, { broker: { url: broker.url } });
  const inbound: InboundResult[] = [];
  const server = await startProvisionServer({
    dataDir,
    shared: 'off',
    clientId: `test-server-${Math.random().toString(16).slice(2)}`,
    onInbound: (r) => inbound.push(r),
    ...options,
  });
  const fleet = await SimFleet.connect(broker.url, { trust: server.data.keys.trust, serverId: server.data.keys.serverId });
  return {
    dir,
    dataDir,
    broker,
    server,
    fleet,
    inbound,
    close: async () => {
      await fleet.close().catch(() => undefined);
      await server.close().catch(() => undefined);
      await broker.close().catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}
