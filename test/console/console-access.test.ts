/**
 * The console in chromium against a real `serve --http`: each role logs in and sees what it may use; a viewer's
 * send is hidden and refused by the API (403 E_FORBIDDEN); hostile ids, tags, user ids, query params and audit
 * details are shown as text (no element is injected, `window.__pwned` is never set); a keyboard-only flow.
 */
import { expect } from 'chai';
import type { Browser, Page } from 'playwright-core';
import { launchChromium, login, needChromium, watchedPage, type WatchedPage } from './browser.js';
import { PASSWORD, USERS, deviceId, startConsoleRig, type ConsoleRig } from './console-rig.js';

/** Each tries to run script or inject markup; `__pwned` would be set if one did. */
const HOSTILE_USER = '<img src=x onerror="window.__pwned=1">';
const HOSTILE_DETAIL = '</code><script>window.__pwned=2</script><b id="injected">x</b>';
const HOSTILE_BY = '"><svg onload="window.__pwned=3">';
const HOSTILE_PARAM = '<img src=x onerror=window.__pwned=4>';

describe('console: roles, refusals, hostile text, keyboard (chromium)', function () {
  this.timeout(120_000);
  let rig: ConsoleRig;
  let browser: Browser;
  const pages: Partial<Record<'admin' | 'operator' | 'viewer', WatchedPage>> = {};

  before(async function () {
    needChromium(this);
    [rig, browser] = await Promise.all([
      startConsoleRig({
        devices: 30,
        seed: async (storage, keys) => {
          await storage.devices.add({ id: 'x-hostile', userId: HOSTILE_USER, origin: 'jwks', ...keys, state: 'provisioned' });
          await storage.devices.addTags('x-hostile', ['a:b-c.d_e', 'script']);
          await storage.audit.append('test.note', 'x-hostile', { note: HOSTILE_DETAIL, by: HOSTILE_BY, nested: { html: HOSTILE_USER } });
        },
      }),
      launchChromium(),
    ]);
  });

  after(async () => {
    await browser?.close();
    await rig?.close();
  });

  async function as(role: 'admin' | 'operator' | 'viewer'): Promise<Page> {
    let w = pages[role];
    if (!w) {
      w = await watchedPage(browser);
      pages[role] = w;
      await login(w.page, rig.base, USERS[role], PASSWORD);
    }
    return w.page;
  }

  it('serves the console with its CSP and redirects / to /console/', async () => {
    const res = await fetch(`${rig.base}/console/`);
    expect(res.status).to.equal(200);
    const csp = res.headers.get('content-security-policy') ?? '';
    expect(csp).to.include("script-src 'self'").and.include("style-src 'self'").and.include("default-src 'none'").and.include("frame-ancestors 'none'");
    expect(res.headers.get('x-content-type-options')).to.equal('nosniff');
    const root = await fetch(`${rig.base}/`, { redirect: 'manual' });
    expect(root.status).to.equal(302);
    expect(root.headers.get('location')).to.match(/\/console\/$/);
  });

  it('a wrong password shows the API error as CODE: message and no session', async () => {
    const w = await watchedPage(browser);
    await w.page.goto(`${rig.base}/console/`);
    await w.page.getByLabel('Name').fill(USERS.viewer);
    await w.page.getByLabel('Password').fill('not-the-password');
    await w.page.getByRole('button', { name: 'Log in' }).click();
    await w.page.getByRole('alert').filter({ hasText: 'E_LOGIN: wrong name or password' }).waitFor();
    expect(await w.page.getByRole('navigation', { name: 'Main' }).count()).to.equal(0);
    await w.page.context().close();
  });

  for (const role of ['admin', 'operator', 'viewer'] as const) {
    it(`${role} logs in and sees the pages of its role`, async () => {
      const page = await as(role);
      expect(await page.locator('.who-name').textContent()).to.equal(USERS[role]);
      expect(await page.locator('.role').textContent()).to.equal(role);
      const nav = await page.getByRole('navigation', { name: 'Main' }).getByRole('link').allTextContents();
      // Every role sees every page; what it may change differs.
      expect(nav).to.deep.equal(['Fleet', 'Rollouts', 'Audit', 'Enrollment', 'Users']);
      await page.locator('tbody tr').first().waitFor();
      // Selecting devices (bulk tag, rollout) is offered to operators and admins only.
      expect(await page.getByRole('checkbox', { name: 'Select all on this page' }).count()).to.equal(role === 'viewer' ? 0 : 1);
    });
  }

  it("a viewer has no send buttons, and the API refuses the viewer's send (403 E_FORBIDDEN), nothing recorded", async () => {
    const page = await as('viewer');
    await page.goto(`${rig.base}/console/#/devices/${deviceId(3)}`);
    await page.getByRole('heading', { name: `Device ${deviceId(3)}` }).waitFor();
    expect(await page.getByRole('button', { name: /^Send / }).count()).to.equal(0);
    const answer = (await page.evaluate(`fetch('/devices/${deviceId(3)}/commands', {
        method: 'POST', credentials: 'same-origin',
        headers: { 'X-Console': '1', 'Content-Type': 'application/json' },
        body: JSON.stringify({ action: 'selftest' }),
      }).then(async (r) => ({ status: r.status, body: await r.json() }))`)) as { status: number; body: { error: { code: string } } };
    expect(answer.status).to.equal(403);
    expect(answer.body.error.code).to.equal('E_FORBIDDEN');
    const cmds = (await page.evaluate(`fetch('/devices/${deviceId(3)}/commands', { headers: { 'X-Console': '1' } }).then((r) => r.json())`)) as {
      commands: unknown[];
    };
    expect(cmds.commands).to.have.length(0);
  });

  it('a viewer sees the users and the enrollment tokens, with no control to change them', async () => {
    const page = await as('viewer');
    await page.goto(`${rig.base}/console/#/users`);
    await page.getByRole('table', { name: 'Operators' }).locator('tbody tr', { hasText: USERS.admin }).waitFor();
    expect(await page.getByRole('form', { name: 'Add an operator' }).count()).to.equal(0);
    expect(await page.getByRole('button', { name: /^(Remove|Disable|Enable|Revoke)$/ }).count()).to.equal(0);
    expect(await page.getByRole('combobox', { name: /^Role of / }).count()).to.equal(0);
    await page.goto(`${rig.base}/console/#/enrollment`);
    await page.getByRole('heading', { name: 'Enrollment', exact: true }).waitFor();
    await page.getByRole('table', { name: 'Enrollment tokens' }).waitFor();
    expect(await page.getByRole('form', { name: 'Create an enrollment token' }).count()).to.equal(0);
    expect(await page.getByRole('button', { name: /^Revoke/ }).count()).to.equal(0);
  });

  it('an operator sends a selftest after a confirmation naming the device; delete needs the id typed', async () => {
    const page = await as('operator');
    await page.goto(`${rig.base}/console/#/devices/${deviceId(5)}`);
    await page.getByRole('button', { name: 'Send delete…' }).click();
    const dialog = page.getByRole('dialog');
    expect(await dialog.locator('code.target').textContent()).to.equal(deviceId(5));
    const send = dialog.getByRole('button', { name: 'Send delete' });
    expect(await send.isDisabled()).to.equal(true);
    await dialog.getByLabel('Type the device id to confirm').fill(deviceId(4));
    expect(await send.isDisabled()).to.equal(true);
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await page.getByRole('button', { name: 'Send selftest…' }).click();
    expect(await page.getByRole('dialog').getByRole('heading').textContent()).to.equal(`Send selftest to ${deviceId(5)}`);
    await page.getByRole('dialog').getByRole('button', { name: 'Send selftest' }).click();
    await page
      .getByRole('status')
      .filter({ hasText: `Sent selftest to ${deviceId(5)}` })
      .waitFor();
    await page.locator('tbody tr', { hasText: 'selftest' }).first().waitFor();
  });

  it('an admin creates an enrollment token (shown once), sees it listed, revokes it; adds an operator; an API error shows as CODE: message', async () => {
    const page = await as('admin');
    await page.goto(`${rig.base}/console/#/enrollment`);
    await page.getByLabel('Device id').fill('sensor-new-7');
    await page.getByLabel('User id').fill('greenhouse');
    await page.getByRole('button', { name: 'Create token' }).click();
    const once = page.getByRole('textbox', { name: 'Enrollment token' });
    await once.waitFor();
    expect((await once.inputValue()).length).to.be.greaterThan(15);
    const row = page.getByRole('table', { name: 'Enrollment tokens' }).locator('tbody tr', { hasText: 'sensor-new-7' });
    await row.waitFor();
    // The listing never carries the token text.
    expect(await row.textContent()).to.not.include(await once.inputValue());
    await page.getByRole('table', { name: 'Pending enrollments' }).getByText('sensor-new-7').waitFor();
    await page.getByRole('button', { name: 'Done' }).click();
    await row.getByRole('button', { name: 'Revoke the token for sensor-new-7' }).click();
    await row.locator('.badge', { hasText: 'revoked' }).waitFor();
    await page.getByRole('table', { name: 'Pending enrollments' }).getByText('sensor-new-7').waitFor({ state: 'detached' });
    // The CLI's checks, shown as the API words them.
    await page.getByLabel('Device id').fill('bad id!');
    await page.getByLabel('User id').fill('greenhouse');
    await page.getByRole('button', { name: 'Create token' }).click();
    await page
      .getByRole('alert')
      .filter({ hasText: /^E_[A-Z_]+: / })
      .waitFor();

    await page.goto(`${rig.base}/console/#/users`);
    await page.getByLabel('Name', { exact: true }).fill('nora');
    await page.getByLabel('Role', { exact: true }).selectOption('operator');
    await page.getByLabel('Password', { exact: true }).fill('nora-password-long-1');
    await page.getByRole('button', { name: 'Add operator' }).click();
    await page.getByRole('combobox', { name: 'Role of nora' }).waitFor();
    expect(await page.getByRole('combobox', { name: 'Role of nora' }).inputValue()).to.equal('operator');
    await page.getByLabel('Password', { exact: true }).fill('short');
    await page.getByLabel('Name', { exact: true }).fill('nina');
    await page.getByRole('button', { name: 'Add operator' }).click();
    await page
      .getByRole('alert')
      .filter({ hasText: /^E_[A-Z_]+: .*password/i })
      .waitFor();
  });

  it('hostile user ids, tags, audit details and URL params are shown as text; no script runs, nothing is injected', async () => {
    const w = pages.admin ?? (await as('admin'), pages.admin);
    if (!w) throw new Error('no admin page');
    const page = w.page;
    await page.goto(`${rig.base}/console/#/devices?q=x-hostile`);
    const row = page.locator('tbody tr', { hasText: 'x-hostile' });
    await row.waitFor();
    expect(await row.textContent()).to.include(HOSTILE_USER);
    await page.goto(`${rig.base}/console/#/devices/x-hostile`);
    await page.getByText(HOSTILE_USER, { exact: true }).waitFor();
    await page.goto(`${rig.base}/console/#/audit?device=x-hostile`);
    await page.locator('tbody tr', { hasText: 'test.note' }).waitFor();
    const auditRow = await page.locator('tbody tr', { hasText: 'test.note' }).textContent();
    expect(auditRow).to.include(HOSTILE_DETAIL).and.include(HOSTILE_BY).and.include(HOSTILE_USER.replace(/"/g, '\\"'));
    // A hostile id in the route and hostile filters in the hash: shown in the inputs and messages as text.
    await page.goto(`${rig.base}/console/#/devices/${encodeURIComponent(HOSTILE_PARAM)}`);
    await page.getByRole('heading', { name: `Device ${HOSTILE_PARAM}` }).waitFor();
    await page.getByRole('alert').waitFor();
    await page.goto(`${rig.base}/console/#/devices?q=${encodeURIComponent(HOSTILE_PARAM)}&tag=${encodeURIComponent(HOSTILE_DETAIL)}`);
    expect(await page.getByLabel('Search id or user').inputValue()).to.equal(HOSTILE_PARAM);
    await page.getByRole('alert').or(page.getByText('No device matches.')).first().waitFor();
    await page.waitForTimeout(300);
    expect(await page.locator('img, svg, #injected, script:not([src])').count()).to.equal(0);
    expect(await w.pwned()).to.equal(false);
    expect(w.errors.filter((e) => !/status of 4\d\d/.test(e))).to.deep.equal([]);
  });

  it('keyboard only: log in, reach a device, open the send dialog, Escape closes it and focus returns', async () => {
    const w = await watchedPage(browser);
    const page = w.page;
    await page.goto(`${rig.base}/console/#/devices`);
    await page.getByLabel('Name').waitFor();
    await page.keyboard.press('Tab');
    expect(await page.evaluate('document.activeElement.id')).to.equal('login-name');
    await page.keyboard.type(USERS.operator);
    await page.keyboard.press('Tab');
    await page.keyboard.type(PASSWORD);
    await page.keyboard.press('Enter');
    await page.locator('tbody tr').first().waitFor();
    // Tab through the page to the first device link and follow it with Enter.
    let found = false;
    for (let i = 0; i < 60 && !found; i++) {
      await page.keyboard.press('Tab');
      found = (await page.evaluate(`document.activeElement?.getAttribute('href') ?? ''`)) === `#/devices/${deviceId(0)}`;
    }
    expect(found, 'the first device link is reachable with Tab').to.equal(true);
    // The focused element shows a visible focus ring.
    expect(await page.evaluate(`getComputedStyle(document.activeElement).outlineStyle`)).to.not.equal('none');
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: `Device ${deviceId(0)}` }).waitFor();
    let onSend = false;
    for (let i = 0; i < 30 && !onSend; i++) {
      await page.keyboard.press('Tab');
      onSend = (await page.evaluate(`document.activeElement?.textContent ?? ''`)) === 'Send selftest…';
    }
    expect(onSend, 'the send button is reachable with Tab').to.equal(true);
    await page.keyboard.press('Enter');
    await page.getByRole('dialog').waitFor();
    // Focus is inside the dialog and stays there (modal): Tab a few times, still inside.
    for (let i = 0; i < 5; i++) {
      await page.keyboard.press('Tab');
      expect(await page.evaluate(`document.querySelector('dialog').contains(document.activeElement)`)).to.equal(true);
    }
    await page.keyboard.press('Escape');
    await page.getByRole('dialog').waitFor({ state: 'detached' });
    let focused = '';
    for (let i = 0; i < 20 && focused !== 'Send selftest…'; i++) {
      if (i) await page.waitForTimeout(50);
      focused = (await page.evaluate(`document.activeElement?.textContent ?? ''`)) as string;
    }
    expect(focused, 'focus back on the button that opened the dialog').to.equal('Send selftest…');
    // The one refusal: GET /session before the login (401), which the browser logs.
    expect(w.errors.filter((e) => !/status of 401/.test(e))).to.deep.equal([]);
    await page.context().close();
  });
});
