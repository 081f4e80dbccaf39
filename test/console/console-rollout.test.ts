/**
 * A rollout started from the console against simulated boards (test/server/sim-fleet.ts: the wire protocol, sealed
 * commands opened and acked signed + encrypted) on mosquitto, served by a real `serve --http` child: select the
 * boards, dry run, confirm; the rollout page follows it live over /events (no reload), pause holds it, resume
 * finishes it.
 */
import { expect } from 'chai';
import type { Browser, Page } from 'playwright-core';
import { mosquittoAvailable } from '../helpers/mosquitto-process.js';
import { launchChromium, login, needChromium, watchedPage, type WatchedPage } from './browser.js';
import { PASSWORD, USERS, startConsoleRig, type ConsoleRig } from './console-rig.js';

const BOARDS = 12;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('console: a rollout from the page to boards on mosquitto, live, paused and resumed (chromium)', function () {
  this.timeout(180_000);
  let rig: ConsoleRig;
  let browser: Browser;
  let w: WatchedPage;
  let page: Page;

  before(async function () {
    needChromium(this);
    if (!mosquittoAvailable()) {
      process.stderr.write('      skipped: mosquitto is not installed (REQUIRE_MOSQUITTO=1 makes this a failure)\n');
      this.skip();
    }
    [rig, browser] = await Promise.all([startConsoleRig({ boards: BOARDS, mosquitto: true }), launchChromium()]);
    w = await watchedPage(browser);
    page = w.page;
    await login(page, rig.base, USERS.operator, PASSWORD);
  });

  after(async () => {
    await browser?.close();
    await rig?.close();
  });

  const applied = async (): Promise<number> =>
    Number(
      (await page
        .locator('dd.count-applied')
        .textContent({ timeout: 1000 })
        .catch(() => '0')) ?? '0',
    );

  it('starts the rollout from the fleet page after its dry run, follows it live, pauses and resumes it', async () => {
    await page.goto(`${rig.base}/console/#/devices?tag=boards`);
    await page.locator('.pager-pos', { hasText: `1-${BOARDS} of ${BOARDS}` }).waitFor();
    // The boards reported in: online, with their agent version.
    await page
      .locator('tbody tr .badge', { hasText: 'online' })
      .nth(BOARDS - 1)
      .waitFor();
    await page.getByRole('checkbox', { name: 'Select all on this page' }).check();
    await page.getByRole('button', { name: 'Start rollout…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByLabel('Action').selectOption('selftest');
    await dialog.getByLabel('Rate per minute').fill('40');
    await dialog.getByRole('button', { name: 'Preview (dry run)' }).click();
    await dialog.getByRole('heading', { name: `Dry run: selftest to ${BOARDS} device(s)` }).waitFor();
    expect(await dialog.getByText(`${BOARDS} online, 0 offline, 0 never reported.`).count()).to.equal(1);
    expect(
      rig.boards.every((b) => b.received.length === 0),
      'the dry run sent nothing',
    ).to.equal(true);
    await dialog.getByRole('button', { name: `Start rollout to ${BOARDS} device(s)` }).click();

    await page.waitForURL(/#\/rollouts\/[^/]+$/);
    await page.getByRole('heading', { name: /^Rollout .*: selftest$/ }).waitFor();
    // From here on the page is never reloaded: a marker set now must still be there at the end.
    await page.evaluate('window.__sameDocument = 1');
    let rolloutRequests = 0;
    page.on('request', (r) => {
      if (/\/rollouts\/[^/?]+(\?|$)/.test(new URL(r.url()).pathname)) rolloutRequests++;
    });

    // Live: the applied count rises while the page only listens.
    for (const deadline = Date.now() + 30_000; (await applied()) < 2; await sleep(100)) {
      if (Date.now() > deadline) throw new Error('no board applied within 30 s');
    }
    await page.getByRole('button', { name: 'Pause' }).click();
    await page.locator('.rollout-state .badge', { hasText: 'paused' }).waitFor();
    await sleep(1500); // what was in flight lands
    const held = await applied();
    await sleep(3500); // at 40/min two more would have gone out
    expect(await applied(), 'nothing more applied while paused').to.equal(held);
    expect(held).to.be.below(BOARDS);
    const sentWhilePaused = rig.boards.filter((b) => b.received.length > 0).length;

    await page.getByRole('button', { name: 'Resume' }).click();
    await page.locator('.rollout-state .badge', { hasText: 'running' }).waitFor();
    await page.locator('.big-progress .progress-text', { hasText: `${BOARDS}/${BOARDS}` }).waitFor({ timeout: 60_000 });
    await page.locator('.rollout-state .badge', { hasText: 'completed' }).waitFor({ timeout: 30_000 });
    expect(await applied()).to.equal(BOARDS);
    expect(await page.evaluate('window.__sameDocument')).to.equal(1);
    // Every board got its command once, after the resume for those not sent before the pause.
    expect(rig.boards.map((b) => b.applied.length)).to.deep.equal(Array(BOARDS).fill(1));
    expect(sentWhilePaused).to.be.below(BOARDS);
    // The page did not poll the rollout: a handful of target rereads when counts moved, not one a second.
    expect(rolloutRequests).to.be.below(BOARDS + 4);

    await page.getByRole('link', { name: 'Rollouts' }).first().click();
    await page.locator('tbody tr', { hasText: 'selftest' }).locator('.badge', { hasText: 'completed' }).waitFor();
    expect(w.errors.filter((e) => !/status of 401/.test(e))).to.deep.equal([]);
  });

  it('the audit page names the operator who created, paused and resumed it', async () => {
    await page.goto(`${rig.base}/console/#/audit?action=rollout`);
    for (const event of ['rollout.create', 'rollout.pause', 'rollout.resume']) {
      const row = page.locator('tbody tr', { has: page.locator('td:nth-child(3)', { hasText: new RegExp(`^${event.replace('.', '\\.')}$`) }) });
      await row.first().waitFor();
      expect(await row.first().locator('td:nth-child(5)').textContent(), event).to.equal(USERS.operator);
    }
  });

  it('the audit page shows a new row live (from /events), without a reload or a poll', async () => {
    await page.goto(`${rig.base}/console/#/audit`);
    await page.locator('tbody tr').first().waitFor();
    await sleep(700); // the stream is open
    let auditRequests = 0;
    page.on('request', (r) => {
      if (new URL(r.url()).pathname === '/audit') auditRequests++;
    });
    const status = await page.evaluate(`fetch('/devices/board-03/tags/live-check', { method: 'PUT', headers: { 'X-Console': '1' } }).then((r) => r.status)`);
    expect(status).to.equal(200);
    await page.locator('tbody tr', { hasText: 'device.tag.add' }).filter({ hasText: 'live-check' }).waitFor({ timeout: 5000 });
    expect(auditRequests).to.equal(0);
  });
});
