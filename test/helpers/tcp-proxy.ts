/**
 * A TCP proxy on loopback for fault tests: put it between a process and a
 * server (PostgreSQL, a broker) and make the network fail on demand.
 *   cut(ms)    every live connection is destroyed at once (both ends see a
 *              reset), and for `ms` new connections are refused (accepted and
 *              destroyed at once, as a firewall's REJECT looks to the client);
 *   pause(ms)  for `ms` nothing flows on live connections and new ones are
 *              held (accepted, not forwarded) until the pause ends: a stalled
 *              network, not a broken one.
 * Both return when the fault is over; `connections` counts what was accepted.
 */
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';

export interface TcpProxy {
  /** 127.0.0.1:port the client connects to. */
  readonly host: string;
  readonly port: number;
  /** Connections accepted so far; `refused`: those destroyed during a cut. */
  readonly stats: { accepted: number; refused: number; cut: number };
  cut(ms: number): Promise<void>;
  pause(ms: number): Promise<void>;
  close(): Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const live = new Set<{ client: Socket; upstream: Socket }>();
  const stats = { accepted: 0, refused: 0, cut: 0 };
  let cutUntil = 0;
  let paused: Promise<void> | undefined;

  const pipe = (client: Socket): void => {
    const upstream = connect(target.port, target.host);
    const pair = { client, upstream };
    live.add(pair);
    const end = (): void => {
      live.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  };

  const server: Server = createServer((client) => {
    stats.accepted++;
    if (Date.now() < cutUntil) {
      stats.refused++;
      client.resetAndDestroy();
      return;
    }
    if (paused) {
      client.pause();
      client.on('error', () => client.destroy());
      void paused.then(() => (client.destroyed ? undefined : (client.resume(), pipe(client))));
      return;
    }
    pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as AddressInfo).port;

  return {
    host: '127.0.0.1',
    port,
    stats,
    async cut(ms: number): Promise<void> {
      cutUntil = Date.now() + ms;
      for (const pair of [...live]) {
        stats.cut++;
        pair.client.resetAndDestroy();
        pair.upstream.destroy();
      }
      live.clear();
      await sleep(ms);
    },
    async pause(ms: number): Promise<void> {
      let release = (): void => undefined;
      paused = new Promise<void>((r) => (release = r));
      const held = [...live];
      for (const { client, upstream } of held) {
        client.pause();
        upstream.pause();
      }
      await sleep(ms);
      paused = undefined;
      release();
      for (const { client, upstream } of held) {
        client.resume();
        upstream.resume();
      }
    },
    async close(): Promise<void> {
      for (const { client, upstream } of live) {
        client.destroy();
        upstream.destroy();
      }
      live.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
