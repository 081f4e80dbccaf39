/** server/inbound-retry.ts: a message that failed for a lost registry connection is handled again, not dropped. */
import { expect } from 'chai';
import { handleUntilStored } from '../../server/core/inbound-retry.js';
import type { InboundResult } from '../../server/core/inbound.js';

const unavailable: InboundResult = { kind: 'dropped', code: 'E_STORAGE_UNAVAILABLE', reason: 'the registry database is unavailable: read ECONNRESET' };

describe('inbound retry on a lost registry connection', () => {
  it('handles the message again, backing off, until the registry answers', async () => {
    const results: InboundResult[] = [unavailable, unavailable, unavailable, { kind: 'ignored' }];
    const waits: number[] = [];
    let calls = 0;
    const r = await handleUntilStored(
      async () => results[calls++] as InboundResult,
      () => false,
      async (ms) => void waits.push(ms),
    );
    expect(r).to.deep.equal({ kind: 'ignored' });
    expect(calls).to.equal(4);
    expect(waits).to.deep.equal([500, 1000, 2000]);
  });

  it('caps the wait at 5 s', async () => {
    const waits: number[] = [];
    let calls = 0;
    await handleUntilStored(
      async () => (++calls < 8 ? unavailable : { kind: 'ignored' }),
      () => false,
      async (ms) => void waits.push(ms),
    );
    expect(waits).to.deep.equal([500, 1000, 2000, 4000, 5000, 5000, 5000]);
  });

  it('gives up without a result (no PUBACK) once the server stops', async () => {
    let stopped = false;
    let calls = 0;
    const r = await handleUntilStored(
      async () => {
        calls++;
        return unavailable;
      },
      () => stopped,
      async () => void (stopped = true),
    );
    expect(r).to.equal(undefined);
    expect(calls).to.equal(1);
  });

  it('returns any other refusal at once, as handled', async () => {
    let calls = 0;
    const refused: InboundResult = { kind: 'dropped', code: 'E_SIGNATURE', reason: 'bad signature' };
    const r = await handleUntilStored(
      async () => {
        calls++;
        return refused;
      },
      () => false,
      async () => {
        throw new Error('must not wait');
      },
    );
    expect(r).to.equal(refused);
    expect(calls).to.equal(1);
  });
});
