/** The wire format shared by agent and server. No I/O here. */
export * from './errors.js';
export * from './guards.js';
export * from './keys.js';
export * from './keyring.js';
export * from './limits.js';
export * from './topics.js';
export * from './gpio-pins.js';
export * from './params.js';
export * from './claims.js';
export * from './replay.js';
export { assertJosePatched, JosePatchError, JOSE_UNPATCHED_MESSAGE } from './jose-patch.js';
export { sealClaims, type SealKeys } from './seal.js';
export { decryptSealed, verifyJws, openSealed, type Decrypted, type Verified } from './open.js';
export * from './command.js';
export * from './ack.js';
export * from './report.js';
export * from './enrollment.js';
export * from './duration.js';
