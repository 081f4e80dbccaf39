/**
 * The agent gets past an oversized command it cannot acknowledge (issue 26): a broker (MQTT 3.1.1,
 * persistent session, no max_packet_size) that re-sends a 10 MB QoS 1 publish right after every
 * CONNACK, its fixed header alone in the bytes the agent reads (so its packet id is not there to
 * PUBACK). After the second refusal of the same packet, the agent connects once with a clean
 * session (which drops the broker's queue; no will on that connection), then again with its
 * persistent session, and subscribes. Each drop is logged as `command.oversize_dropped`.
 *
 * The broker is a minimal MQTT 3.1.1 server over a real socket, written here: real brokers cannot
 * be made to split a packet where this needs it.
 */
import { expect } from 'chai';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { startAgent, type RunningAgent } from '../../agent/agent.js';
import { bufferedLogger } from '../../lib/log.js';
import { makeDevice, newServerParty, removeDir, showAgentLogOnFailure, waitFor } from './agent-fixture.js';
import { remainingLength } from '../helpers/mqtt-bytes.js';

/** One CONNECT as the broker saw it. */
interface SeenConnect {
  clean: boolean;
  will: boolean;
}

class QueueingBroker {
  readonly connects: SeenConnect[] = [];
  subscribed = 0;
  /** A 10 MB QoS 1 publish is queued for the client's persistent session until a clean session drops it. */
  queued = true;
  #server: Server | undefined;
  readonly #sockets = new Set<Socket>();

  async start(): Promise<string> {
    this.#server = createServer((s) => this.#accept(s));
    await new Promise<void>((r) => this.#server!.listen(0, '127.0.0.1', () => r()));
    return `mqtt://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((r) => (this.#server ? this.#server.close(() => r()) : r()));
  }

  #accept(sock: Socket): void {
    this.#sockets.add(sock);
    sock.on('close', () => this.#sockets.delete(sock));
    sock.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    let stalled = false; // the big packet's header was sent: its body never comes, nothing else is answered
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (buf.length < 2) return;
        let len = 0;
        let mult = 1;
        let i = 1;
        for (; i < 5 && i < buf.length; i++) {
          len += ((buf[i] as number) & 0x7f) * mult;
          mult *= 128;
          if (((buf[i] as number) & 0x80) === 0) break;
        }
        if (i >= buf.length || buf.length < i + 1 + len) return;
        const first = buf[0] as number;
        const body = buf.subarray(i + 1, i + 1 + len);
        buf = buf.subarray(i + 1 + len);
        if (!stalled) stalled = this.#packet(sock, first, body);
      }
    });
  }

  /** Answers one packet; true when the connection is now stalled on the big packet. */
  #packet(sock: Socket, first: number, body: Buffer): boolean {
    switch (first >> 4) {
      case 1: {
        // CONNECT: protocol name (2 + n bytes), level, flags.
        const flags = body[2 + body.readUInt16BE(0) + 1] as number;
        const clean = (flags & 0x02) !== 0;
        this.connects.push({ clean, will: (flags & 0x04) !== 0 });
        if (clean) this.queued = false;
        const connack = Buffer.from([0x20, 0x02, clean ? 0 : 1, 0x00]);
        if (!this.queued) {
          sock.write(connack);
          return false;
        }
        // The queued publish right behind the CONNACK, as a broker re-sends a session's in-flight message:
        // QoS 1 + DUP, 10 MB declared, and only its fixed header in this read.
        sock.write(Buffer.concat([connack, Buffer.from([0x3a, ...remainingLength(10 * 1024 * 1024)])]));
        return true;
      }
      case 8: // SUBSCRIBE -> SUBACK granting QoS 1
        this.subscribed += 1;
        sock.write(Buffer.from([0x90, 0x03, body[0] as number, body[1] as number, 0x01]));
        return false;
      case 3: {
        // PUBLISH from the agent (reports): PUBACK at QoS 1.
        if (((first >> 1) & 3) === 1) {
          const id = body.readUInt16BE(2 + body.readUInt16BE(0));
          sock.write(Buffer.from([0x40, 0x02, id >> 8, id & 0xff]));
        }
        return false;
      }
      case 12: // PINGREQ
        sock.write(Buffer.from([0xd0, 0x00]));
        return false;
      default:
        return false;
    }
  }
}

describe('agent: an oversized command that comes again is shed with one clean session (MQTT 3.1.1, persistent session)', function () {
  this.timeout(30_000);
  const logs = bufferedLogger('debug');
  showAgentLogOnFailure(logs);
  const broker = new QueueingBroker();
  let agent: RunningAgent | undefined;
  let dir = '';

  after(async () => {
    await agent?.stop();
    await broker.stop();
    if (dir) await removeDir(dir);
  });

  it('two refusals of the same packet, then clean once (no will), then the persistent session again, subscribed', async function () {
    const url = await broker.start();
    const files = await makeDevice({ deviceId: 'sensor-shed', brokerUrl: url, server: await newServerParty(), keys: true });
    dir = files.dir;
    agent = await startAgent({ configPath: files.configPath, log: logs.logger, backoff: { minMs: 50, maxMs: 200 } });
    await waitFor('the agent to subscribe (a wedged agent never does)', () => broker.subscribed > 0, 15_000);
    expect(broker.connects.map((c) => c.clean)).to.deep.equal([false, false, true, false]);
    expect(broker.connects.map((c) => c.will)).to.deep.equal([true, true, false, true]);
    const dropped = logs.lines.filter((l) => l.includes('command.oversize_dropped'));
    expect(dropped).to.have.length(2);
    for (const l of dropped) expect(l).to.match(/^ERROR command\.oversize_dropped topic=provision\/sensor-shed\/command bytes=10485760 limit_bytes=132096 /);
    expect(dropped[1]).to.match(/clean session once/);
    expect(logs.lines.some((l) => l.includes('session.shed'))).to.equal(true);
    expect(logs.lines.join('\n')).to.not.match(/ACL/);
    await waitFor('the agent to be ready', () => agent!.connected, 5000);
  });
});
