/**
 * The system chromium (Debian's `chromium`, /usr/bin/chromium or $CHROMIUM) driven by playwright-core, which
 * downloads nothing. Missing: the suite fails under REQUIRE_CHROMIUM=1 (CI), else it is skipped with a message.
 * playwright's launch() gives each browser a fresh temporary --user-data-dir.
 */
import { existsSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** True when chromium can run here; throws when REQUIRE_CHROMIUM=1 and it cannot. */
export function chromiumAvailable(): boolean {
  if (existsSync(CHROMIUM)) return true;
  if (process.env.REQUIRE_CHROMIUM === '1')
    throw new Error(`chromium is required (REQUIRE_CHROMIUM=1) but ${CHROMIUM} does not exist (apt-get install chromium)`);
  return false;
}

/** In a `before`: skips the suite (with a message) when chromium is missing. */
export function needChromium(ctx: Mocha.Context): void {
  if (!chromiumAvailable()) {
    process.stderr.write(`      skipped: no chromium at ${CHROMIUM} (apt-get install chromium; REQUIRE_CHROMIUM=1 makes this a failure)\n`);
    ctx.skip();
  }
}

export async function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

/**
 * A page that records what would show a script ran: page errors, console errors and CSP violations, and a
 * `window.__pwned` check (hostile input in the fixtures tries to set it).
 */
export interface WatchedPage {
  page: Page;
  errors: string[];
  pwned(): Promise<boolean>;
}

export async function watchedPage(browser: Browser, viewport = { width: 1400, height: 900 }): Promise<WatchedPage> {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  return { page, errors, pwned: async () => (await page.evaluate('window.__pwned !== undefined')) === true };
}

/** Logs in through the form and waits for the navigation bar. */
export async function login(page: Page, base: string, name: string, password: string): Promise<void> {
  await page.goto(`${base}/console/#/devices`);
  await page.getByLabel('Name').fill(name);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('navigation', { name: 'Main' }).waitFor();
}
