/** The audit hash chain's pure code lives in server/audit/chain.ts (shared with the standalone verifier); re-exported for the storages. */
export * from '../audit/chain.js';
