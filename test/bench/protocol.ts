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

async function timeIt(iterations: number, fn: (i: number) => unknown): Promise<number> {
  for (let i = 0; i < Math.min(50, iterations); i++) await fn(i); // warm up
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) await fn(i);
  return Number(process.hrtime.bigint() - t0) / 1e6 / iterations;
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
  const seal = await timeIt(iterations, () => sealCommand(input, { signer: server, recipient }));
  const sealFloor = await timeIt(iterations, (i) => floorSeal(floorClaims('dev-1', i + 1), fk));
  const open = await timeIt(iterations, () => openCommand(token, { deviceId: 'dev-1', clock: TRUSTED_CLOCK, ...rings }));
  const openFloor = await timeIt(iterations, () => floorOpen(floorToken, fk));
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
