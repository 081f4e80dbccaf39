import { expect } from 'chai';
import { IdleCollector } from '../../agent/system/idle-gc.js';

type Call = { type: string; execution: string };

describe('idle GC (agent/system/idle-gc.ts)', () => {
  it('runs one major, synchronous GC once pokes stop for the delay', async () => {
    const calls: Call[] = [];
    let done!: () => void;
    const collected = new Promise<void>((r) => (done = r));
    const idle = new IdleCollector(20, (o: Call) => {
      calls.push(o);
      done();
    });
    expect(idle.available).to.equal(true);
    // A burst of activity (start-up, a command and its follow-up) yields one collection, after it.
    idle.poke();
    idle.poke();
    idle.poke();
    expect(calls).to.deep.equal([]);
    await collected;
    // Its timer was the only one: nothing else is pending that could call gc again.
    await new Promise((r) => setImmediate(r));
    expect(calls).to.deep.equal([{ type: 'major', execution: 'sync' }]);
    idle.stop();
  });

  it('does nothing without an exposed gc, and nothing after stop()', async () => {
    const none = new IdleCollector(1, undefined);
    expect(none.available).to.equal(false);
    none.poke(); // no timer, no throw
    const calls: Call[] = [];
    const idle = new IdleCollector(1, (o: Call) => calls.push(o));
    idle.poke();
    idle.stop();
    idle.poke();
    // A 1 ms timer that had not been stopped would have fired before this 50 ms one.
    await new Promise((r) => setTimeout(r, 50));
    expect(calls).to.deep.equal([]);
  });

  it('the agent processes the tests and the board run have gc exposed', async () => {
    const { AGENT_NODE_FLAGS } = await import('../helpers/agent-process.js');
    expect(AGENT_NODE_FLAGS).to.include('--expose-gc');
  });
});
