/** Protocol figures: seal and open+verify of a command, node-jose path vs the node:crypto floor. */
import { KeyRing, TRUSTED_CLOCK, generateEncryptionKey, generateSigningKey, openCommand, sealCommand, toPublicJwk } from '../../protocol/index.js';
import { floorClaims, floorKeys, floorOpen, floorSeal } from './floor.js';

export interface ProtocolFigures {
  iterations: number;
  seal_ms: number;
  seal_floor_ms: number;
  seal_ratio: number;
  open_verify_ms: number;
  open_verify_floor_ms: number;
  open_verify_ratio: number;
}

/**
 * Mean ms per call of `a` and of `b`, measured in alternating blocks of 50 so
 * that both see the same machine: on a shared machine the load moves, and
 * measuring one after the other skews their ratio.
 */
async function timePair(iterations: number, a: (i: number) => unknown, b: (i: number) => unknown): Promise<[number, number]> {
  for (let i = 0; i < Math.min(50, iterations); i++) {
    await a(i); // warm up
    await b(i);
  }
  let ta = 0n;
  let tb = 0n;
  for (let done = 0; done < iterations; done += 50) {
    const n = Math.min(50, iterations - done);
    let t0 = process.hrtime.bigint();
    for (let i = done; i < done + n; i++) await a(i);
    ta += process.hrtime.bigint() - t0;
    t0 = process.hrtime.bigint();
    for (let i = done; i < done + n; i++) await b(i);
    tb += process.hrtime.bigint() - t0;
  }
  return [Number(ta) / 1e6 / iterations, Number(tb) / 1e6 / iterations];
}

export async function benchProtocol(iterations: number): Promise<ProtocolFigures> {
  const [server, device] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
  const recipient = toPublicJwk(device);
  const rings = { decryption: await KeyRing.create([device]), verification: await KeyRing.create([toPublicJwk(server)]) };
  const fk = floorKeys(server, device);

  // The floor is honest: what it seals, our openCommand accepts.
  const floorToken = floorSeal(floorClaims('dev-1', 1), fk);
  await openCommand(floorToken, { deviceId: 'dev-1', clock: TRUSTED_CLOCK, ...rings });

  const input = { serverId: 'srv', deviceId: 'dev-1', action: 'update' as const, userId: 'u1', params: { sensor: { enabled: true } }, seq: 1 };
  const { token } = await sealCommand(input, { signer: server, recipient });
  const [seal, sealFloor] = await timePair(
    iterations,
    () => sealCommand(input, { signer: server, recipient }),
    (i) => floorSeal(floorClaims('dev-1', i + 1), fk),
  );
  const [open, openFloor] = await timePair(
    iterations,
    () => openCommand(token, { deviceId: 'dev-1', clock: TRUSTED_CLOCK, ...rings }),
    () => floorOpen(floorToken, fk),
  );
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return {
    iterations,
    seal_ms: r(seal),
    seal_floor_ms: r(sealFloor),
    seal_ratio: r(seal / sealFloor),
    open_verify_ms: r(open),
    open_verify_floor_ms: r(openFloor),
    open_verify_ratio: r(open / openFloor),
  };
}
