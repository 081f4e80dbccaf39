/** Shared storage suite: the audit rows of changes made for someone name them (`by`, and `via` for commands), on both backends; without one they say nothing of it. */
import { expect } from 'chai';
import { forEachBackend } from './backends.js';
import { addDevice, sendCommand, spec } from './fixtures.js';

describe('storage: audit actor (by)', function () {
  forEachBackend((b) => {
    it('tags, commands, rollout create and retry name who asked; without one the rows have no by', async () => {
      const s = await b.open();
      await addDevice(s, 'a', { userId: 'u' });
      await s.devices.addTags('a', ['lab'], 'otto');
      await s.devices.removeTags('a', ['lab'], 'otto');
      await s.devices.addTags('a', ['plain']);
      await sendCommand(s, 'a', { via: 'http', by: 'otto' });
      await sendCommand(s, 'a');
      const r = await s.rollouts.createFromSelector(spec({ devices: ['a'] }), { needsDeviceUser: false, by: 'otto' });
      await s.rollouts.createFromSelector(spec({ devices: ['a'] }), {
        needsDeviceUser: false,
        by: 'ada',
        retryOf: { id: r.id, inFlightLeftOut: 0 },
      });
      await s.rollouts.createFromSelector(spec({ all: true }), { needsDeviceUser: false });
      const rows = (await s.audit.log()).filter((e) => e.event !== 'device.provisioned' && e.event !== 'device.add');
      expect(rows.map((e) => [e.event, e.detail.by ?? null, e.detail.via ?? null])).to.deep.equal([
        ['device.tag.add', 'otto', null],
        ['device.tag.remove', 'otto', null],
        ['device.tag.add', null, null],
        ['command.create', 'otto', 'http'],
        ['command.create', null, null],
        ['rollout.create', 'otto', null],
        ['rollout.create', 'ada', null],
        ['rollout.retry', 'ada', null],
        ['rollout.create', null, null],
      ]);
    });
  });
});
