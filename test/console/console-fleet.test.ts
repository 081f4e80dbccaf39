/**
 * The fleet page with 1,000 registered devices in chromium against a real `serve --http`: pages of 50 from the API,
 * next / previous, sort by a header, search, tag filter, select a page and tag it in bulk, a dry-run preview.
 */
import { expect } from 'chai';
import type { Browser, Page } from 'playwright-core';
import { launchChromium, login, needChromium, watchedPage, type WatchedPage } from './browser.js';
import { PASSWORD, USERS, deviceId, startConsoleRig, type ConsoleRig } from './console-rig.js';

const DEVICES = 1000;

describe('console: the fleet page with 1,000 devices (chromium)', function () {
  this.timeout(180_000);
  let rig: ConsoleRig;
  let browser: Browser;
  let w: WatchedPage;
  let page: Page;
  const deviceRequests: string[] = [];

  before(async function () {
    needChromium(this);
    [rig, browser] = await Promise.all([startConsoleRig({ devices: DEVICES }), launchChromium()]);
    w = await watchedPage(browser);
    page = w.page;
    page.on('request', (r) => {
      const u = new URL(r.url());
      if (u.pathname === '/devices') deviceRequests.push(u.search);
    });
    await login(page, rig.base, USERS.operator, PASSWORD);
  });

  after(async () => {
    await browser?.close();
    await rig?.close();
  });

  const ids = (): Promise<string[]> => page.locator('tbody tr td:nth-child(2) a').allTextContents();
  async function waitFor(text: string): Promise<void> {
    await page.locator('.pager-pos', { hasText: new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`) }).waitFor();
  }

  it('shows the first 50 of 1,000, asking the API for one page', async () => {
    await waitFor('1-50 of 1000');
    const first = await ids();
    expect(first).to.have.length(50);
    expect(first[0]).to.equal(deviceId(0));
    expect(first[49]).to.equal(deviceId(49));
    expect(deviceRequests.at(-1)).to.match(/limit=50/);
  });

  it('pages forward and back', async () => {
    await page.getByRole('button', { name: 'Next' }).click();
    await waitFor('51-100 of 1000');
    expect((await ids())[0]).to.equal(deviceId(50));
    expect(page.url()).to.match(/offset=50/);
    await page.getByRole('button', { name: 'Previous' }).click();
    await waitFor('1-50 of 1000');
    expect((await ids())[0]).to.equal(deviceId(0));
  });

  it('sorts by a header, both ways', async () => {
    await page.getByRole('button', { name: 'Device' }).click();
    // Already sorted by id ascending: the first click makes it descending only when id was the active sort.
    await page.locator('th[aria-sort="ascending"], th[aria-sort="descending"]').first().waitFor();
    const dir = await page.locator('th', { has: page.getByRole('button', { name: /^Device/ }) }).getAttribute('aria-sort');
    if (dir === 'ascending') await page.getByRole('button', { name: /^Device/ }).click();
    await page.locator('th[aria-sort="descending"]').waitFor();
    await page
      .locator('tbody tr td:nth-child(2) a', { hasText: deviceId(999) })
      .first()
      .waitFor();
    expect((await ids())[0]).to.equal(deviceId(999));
    expect((await ids())[1]).to.equal(deviceId(998));
    await page.getByRole('button', { name: /^User/ }).click();
    await page.locator('th[aria-sort="ascending"]', { hasText: 'User' }).waitFor();
    await page.locator('tbody tr:first-child td:nth-child(3)', { hasText: /^user-0$/ }).waitFor();
    // 25 devices per user: the page holds user-0's and user-1's, in that order (text order: user-0, user-1, user-10, ...).
    const users = await page.locator('tbody tr td:nth-child(3)').allTextContents();
    expect(users.slice(0, 25).every((u) => u === 'user-0')).to.equal(true);
    expect(users.slice(25).every((u) => u === 'user-1')).to.equal(true);
  });

  it('searches by id or user and filters by tag', async () => {
    await page.getByLabel('Search id or user').fill('dev-0012');
    await page.getByRole('button', { name: 'Search' }).click();
    await waitFor('1-10 of 10');
    expect((await ids()).sort()).to.deep.equal(Array.from({ length: 10 }, (_, i) => deviceId(120 + i)));
    await page.getByLabel('Search id or user').fill('user-7');
    await page.getByRole('button', { name: 'Search' }).click();
    await waitFor(`1-25 of 25`);
    await page.getByLabel('Search id or user').fill('');
    await page.getByRole('button', { name: 'Search' }).click();
    await waitFor('1-50 of 1000');
    await page.getByLabel('Tag', { exact: true }).fill('canary');
    await page.getByLabel('Tag', { exact: true }).press('Enter'); // Enter submits the filter form
    await waitFor('1-50 of 100');
    const tags = await page.locator('tbody tr td:nth-child(4)').allTextContents();
    expect(tags.every((t) => t.includes('canary'))).to.equal(true);
  });

  it('selects a page and tags it in bulk; the tag filter then finds exactly those', async () => {
    await page.goto(`${rig.base}/console/#/devices?tag=site-b`);
    await waitFor('1-50 of 500');
    const chosen = await ids();
    await page.getByRole('checkbox', { name: 'Select all on this page' }).check();
    await page.getByRole('region', { name: 'Selected devices' }).getByText('50 selected').waitFor();
    await page.locator('#bulk-tag').fill('bulk-x');
    await page.getByRole('button', { name: 'Add tag' }).click();
    await page.getByRole('status').filter({ hasText: 'Added tag bulk-x to 50 device(s).' }).waitFor();
    await page.goto(`${rig.base}/console/#/devices?tag=bulk-x`);
    await waitFor('1-50 of 50');
    expect((await ids()).sort()).to.deep.equal([...chosen].sort());
  });

  it('a rollout to selected devices shows its dry run first; cancelling sends nothing', async () => {
    await page.getByRole('button', { name: 'Clear selection' }).click();
    await page.goto(`${rig.base}/console/#/devices?q=dev-0000`);
    await waitFor('1-10 of 10');
    await page.getByRole('checkbox', { name: `Select ${deviceId(1)}` }).check();
    await page.getByRole('checkbox', { name: `Select ${deviceId(2)}` }).check();
    await page.getByRole('button', { name: 'Start rollout…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByLabel('Action').selectOption('selftest');
    await dialog.getByRole('button', { name: 'Preview (dry run)' }).click();
    await dialog
      .getByRole('heading', { name: 'Dry run: selftest to 2 device(s)' })
      .waitFor({ timeout: 10_000 })
      .catch(async (err: unknown) => {
        throw new Error(`${String(err)}\ndialog: ${await dialog.textContent()}`);
      });
    expect(await dialog.getByText('0 online, 0 offline, 2 never reported').count()).to.equal(1);
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    const rollouts = (await page.evaluate(`fetch('/rollouts', { headers: { 'X-Console': '1' } }).then((r) => r.json())`)) as { rollouts: unknown[] };
    expect(rollouts.rollouts).to.have.length(0);
    // The one refusal: GET /session before the login (401), which the browser logs.
    expect(w.errors.filter((e) => !/status of 401/.test(e))).to.deep.equal([]);
  });
});
