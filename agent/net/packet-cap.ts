/**
 * Inbound MQTT packet size cap, enforced on the byte stream before mqtt.js
 * buffers a packet. mqtt-packet's parser keeps a packet's bytes until the
 * whole packet is there, and mqtt.js checks `maximumPacketSize` only on the
 * parsed packet, so a broker could make the agent hold a 200 MB publish in
 * memory before the 64 KiB message cap applies. MQTT 5's Maximum Packet Size
 * (sent in CONNECT, see mqtt-session.ts) asks a well-behaved broker not to
 * send more; this watches what actually arrives, with either protocol version.
 *
 * Only the fixed header's framing is read (one type byte, then the
 * "remaining length" as 1-4 bytes of 7 bits), which is the least MQTT
 * parsing that can know a packet's size before its body; the packets
 * themselves are still parsed by mqtt-packet alone. As soon as a declared
 * remaining length exceeds the cap (or the length encoding is invalid),
 * `onOversize` is called once and nothing more is looked at: the caller
 * stops reading and drops the connection, so at most one socket read of the
 * body is buffered.
 */
import type { Duplex } from 'node:stream';

/**
 * Largest packet the agent reads: the production broker's `max_packet_size`
 * (128 KiB, provisioning/mosquitto/sensor-broker.conf) plus header room, so
 * whatever that broker forwards is read and then refused by the 64 KiB
 * message cap without a disconnect; only a broker configured otherwise (or
 * hostile) can send more, and that is refused unread.
 */
export const MAX_INBOUND_PACKET_BYTES = 129 * 1024;

/** What is known of the packet that tripped the cap: its fixed header's first byte and the start of its body. */
export interface OversizeHead {
  /** The fixed header's first byte (packet type in the high nibble, flags in the low one). */
  first: number;
  /** The bytes of the body that came in the same read (at most HEAD_BYTES): enough for a publish's topic and packet id. */
  body: Buffer;
}

/** How much of an oversized packet's body is kept for its description (a copy, never fed to the parser). */
const HEAD_BYTES = 1024;

/** An oversized PUBLISH as its first bytes tell it: topic and, at QoS 1 or 2, the packet id. */
export interface OversizePublish {
  topic: string;
  qos: number;
  /** Absent when the packet id was not in the bytes read. */
  packetId?: number;
}

/** The topic (and packet id) of an oversized PUBLISH from its head; undefined for another packet type or too few bytes. */
export function oversizePublish(head: OversizeHead): OversizePublish | undefined {
  if (head.first >> 4 !== 3) return undefined;
  const qos = (head.first >> 1) & 3;
  const b = head.body;
  if (b.length < 2) return undefined;
  const len = b.readUInt16BE(0);
  if (b.length < 2 + len) return undefined;
  const topic = b.toString('utf8', 2, 2 + len);
  if (qos === 0 || b.length < 4 + len) return { topic, qos };
  return { topic, qos, packetId: b.readUInt16BE(2 + len) };
}

export function capInboundPackets(stream: Duplex, maxBytes: number, onOversize: (declared: number, head: OversizeHead) => void): void {
  let skip = 0; // body bytes of the current packet still to pass
  let lengthBytes = -1; // -1: a fixed header's first byte is next; else how many length bytes were read
  let length = 0;
  let multiplier = 1;
  let first = 0;
  let tripped = false;
  const watch = (chunk: Buffer): void => {
    if (tripped) return;
    let i = 0;
    while (i < chunk.length) {
      if (skip > 0) {
        const n = Math.min(skip, chunk.length - i);
        skip -= n;
        i += n;
        continue;
      }
      const byte = chunk[i++] as number;
      if (lengthBytes < 0) {
        first = byte;
        lengthBytes = 0;
        length = 0;
        multiplier = 1;
        continue;
      }
      length += (byte & 0x7f) * multiplier;
      multiplier *= 128;
      lengthBytes += 1;
      if ((byte & 0x80) !== 0 && lengthBytes < 4) continue;
      if ((byte & 0x80) !== 0 || length > maxBytes) {
        tripped = true;
        stream.off('data', watch);
        onOversize(length, { first, body: Buffer.from(chunk.subarray(i, i + HEAD_BYTES)) });
        return;
      }
      skip = length;
      lengthBytes = -1;
    }
  };
  stream.on('data', watch);
}

/**
 * Stops feeding `stream` to the parser it is piped into (mqtt.js's), for good: after an oversized packet.
 * `pause()` alone is not enough: when the pipe was waiting for the parser to drain (it is busy with a
 * command until that command's PUBACK), the pipe's drain handler calls `resume()` and the rest of the
 * oversized packet flows into the parser. Unpiped first, nothing resumes it; what the parser already
 * holds (the commands parsed before) is still processed.
 */
export function stopReading(stream: Duplex): void {
  stream.unpipe();
  stream.pause();
}
