/**
 * The inbound packet cap's framing (agent/packet-cap.ts) on a real stream:
 * packets of every remaining-length width, split at every kind of chunk
 * boundary, pass; the first one over the cap, or with an invalid length
 * encoding, trips it exactly once with the declared size.
 */
import { expect } from 'chai';
import { PassThrough } from 'node:stream';
import { capInboundPackets, MAX_INBOUND_PACKET_BYTES } from '../../agent/packet-cap.js';

function remainingLength(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return out;
}

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
