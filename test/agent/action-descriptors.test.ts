/** The action descriptors the pipeline reads (agent/actions/): one per protocol action, with the policies of docs/AGENT.md. */
import { expect } from 'chai';
import { ACTION_DESCRIPTORS } from '../../agent/actions/index.js';
import { ACTIONS } from '../../protocol/index.js';

describe('agent action descriptors', () => {
  it('describe every protocol action once, under its own name', () => {
    expect(Object.keys(ACTION_DESCRIPTORS).sort()).to.deep.equal([...ACTIONS].sort());
    for (const [name, d] of Object.entries(ACTION_DESCRIPTORS)) expect(d.action).to.equal(name);
  });

  it('update, rotate and upgrade need a provisioned device; every action but selftest and upgrade runs its hook; update and upgrade ack themselves', () => {
    const which = (pick: (d: (typeof ACTION_DESCRIPTORS)[keyof typeof ACTION_DESCRIPTORS]) => boolean): string[] =>
      Object.values(ACTION_DESCRIPTORS)
        .filter(pick)
        .map((d) => d.action)
        .sort();
    expect(which((d) => d.needsProvisioned)).to.deep.equal(['rotate', 'update', 'upgrade']);
    expect(which((d) => d.runsHook)).to.deep.equal(['delete', 'request', 'rotate', 'update']);
    expect(which((d) => d.ack === 'action')).to.deep.equal(['update', 'upgrade']);
    expect(which((d) => d.inProgress !== undefined)).to.deep.equal(['upgrade']);
    expect(which((d) => !d.retiresPreviousKey)).to.deep.equal(['delete', 'rotate']);
    expect(which((d) => d.savesFailedChange)).to.deep.equal(['rotate']);
  });
});
