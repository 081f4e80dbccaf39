/**
 * The inbound packet cap's framing (agent/net/packet-cap.ts) on a real stream:
 * packets of every remaining-length width, split at every kind of chunk
 * boundary, pass; the first one over the cap, or with an invalid length
 * encoding, trips it exactly once with the declared size.
 */
import { expect } from 'chai';
import { PassThrough, Writable } from 'node:stream';
import { capInboundPackets, MAX_INBOUND_PACKET_BYTES, oversizePublish, stopReading, type OversizeHead } from '../../agent/net/packet-cap.js';
import { remainingLength } from '../helpers/mqtt-bytes.js';

function packet(bodyBytes: number): Buffer {
  return Buffer.concat([Buffer.from([0x30, ...remainingLength(bodyBytes)]), Buffer.alloc(bodyBytes, 0x61)]);
}

async function feed(stream: PassThrough, data: Buffer, chunk: number): Promise<void> {
  for (let i = 0; i < data.length; i += chunk) {
    stream.write(data.subarray(i, i + chunk));
    await new Promise((r) => setImmediate(r));
  }
}

describe('agent packet cap: fixed-header framing', function () {
  const sizes = [0, 1, 127, 128, 16_383, 16_384, 65_536, MAX_INBOUND_PACKET_BYTES];

  for (const chunk of [1, 2, 3, 7, 4096, 70_000]) {
    it(`packets up to the cap pass in chunks of ${chunk} bytes; the next one over it trips once`, async function () {
      const s = new PassThrough();
      const trips: number[] = [];
      capInboundPackets(s, MAX_INBOUND_PACKET_BYTES, (n) => trips.push(n));
      s.resume();
      const ok = Buffer.concat(sizes.map(packet));
      // Tiny chunks over the first 20 KB (the packets of 1- to 3-byte lengths and their boundaries), then bigger ones.
      const split = chunk < 4096 ? 20_000 : 0;
      await feed(s, ok.subarray(0, split), chunk);
      await feed(s, ok.subarray(split), split > 0 ? 65_536 : chunk);
      expect(trips).to.deep.equal([]);
      await feed(s, Buffer.concat([Buffer.from([0x30, ...remainingLength(MAX_INBOUND_PACKET_BYTES + 1)]), Buffer.alloc(10)]), chunk);
      await feed(s, packet(5), chunk);
      expect(trips).to.deep.equal([MAX_INBOUND_PACKET_BYTES + 1]);
    });
  }

  it('a remaining length with a fifth continuation byte (invalid) trips', async function () {
    const s = new PassThrough();
    const trips: number[] = [];
    capInboundPackets(s, 1 << 30, (n) => trips.push(n));
    s.resume();
    await feed(s, Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]), 1);
    expect(trips).to.have.length(1);
  });
});

describe('agent packet cap: stopping the read after an oversized packet', function () {
  it('no more bytes reach the piped parser, also after it drains what it had (pipe would resume a paused source)', async function () {
    const src = new PassThrough();
    const received: Buffer[] = [];
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let first = true;
    // The parser side, busy with a command (as mqtt.js is until a command's PUBACK): a small buffer that fills.
    const dest = new Writable({
      highWaterMark: 1024,
      write(chunk: Buffer, _enc, done) {
        received.push(chunk);
        if (first) {
          first = false;
          void held.then(() => done());
        } else done();
      },
    });
    // Bytes the pipe hands to the parser side.
    let handed = 0;
    const write = dest.write.bind(dest);
    dest.write = ((chunk: Buffer, ...rest: []) => {
      handed += chunk.length;
      return write(chunk, ...rest);
    }) as typeof dest.write;
    src.pipe(dest);
    let tripped = false;
    const fed = (): number => handed;
    let fedAtTrip = 0;
    capInboundPackets(src, 1024, () => {
      tripped = true;
      fedAtTrip = fed();
      stopReading(src);
    });
    src.write(packet(10)); // the command being processed
    // An oversized publish starts, in one socket read bigger than the parser's buffer (the pipe then waits
    // for its drain), and its body keeps coming.
    src.write(Buffer.concat([Buffer.from([0x30, ...remainingLength(1 << 20)]), Buffer.alloc(4096, 0x62)]));
    for (let i = 0; i < 64; i++) src.write(Buffer.alloc(1024, 0x62));
    await new Promise((r) => setImmediate(r));
    expect(tripped).to.equal(true);
    // The command finishes: the parser drains what it had buffered.
    release();
    await new Promise<void>((r) => (dest.writableNeedDrain ? dest.once('drain', () => r()) : r()));
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(dest.writableLength, 'parser drained').to.equal(0);
    expect(received.reduce((n, b) => n + b.length, 0)).to.equal(handed);
    expect(fed() - fedAtTrip, 'bytes fed to the parser after the trip').to.equal(0);
  });
});

describe('agent packet cap: what an oversized publish is', function () {
  it('the topic and packet id of a QoS 1 PUBLISH from the bytes after its length; none for another packet or too few bytes', async function () {
    const s = new PassThrough();
    const trips: { declared: number; head: OversizeHead }[] = [];
    capInboundPackets(s, 1024, (declared, head) => trips.push({ declared, head }));
    s.resume();
    const topic = Buffer.from('provision/board-1/command');
    const body = Buffer.concat([Buffer.from([0, topic.length]), topic, Buffer.from([0x12, 0x34]), Buffer.alloc(2000, 0x41)]);
    // QoS 1 with the DUP flag (a redelivery): 0x3a.
    await feed(s, Buffer.concat([Buffer.from([0x3a, ...remainingLength(body.length)]), body]), 65_536);
    expect(trips).to.have.length(1);
    expect(trips[0]!.declared).to.equal(body.length);
    expect(oversizePublish(trips[0]!.head)).to.deep.equal({ topic: 'provision/board-1/command', qos: 1, packetId: 0x1234 });
    expect(oversizePublish({ first: 0x32, body: body.subarray(0, 10) })).to.equal(undefined);
    expect(oversizePublish({ first: 0x32, body: body.subarray(0, 2 + topic.length) })).to.deep.equal({ topic: 'provision/board-1/command', qos: 1 });
    expect(oversizePublish({ first: 0x30, body })).to.deep.equal({ topic: 'provision/board-1/command', qos: 0 });
    expect(oversizePublish({ first: 0x90, body })).to.equal(undefined);
  });
});
