/**
 * The console's fleet page in chromium with a large registered fleet behind a real `serve --http`: the time from
 * navigating to #/devices (logged in, app loaded) to the first table row in the DOM and painted, measured in the page
 * (a MutationObserver, then the next animation frame); and a cold load of /console/#/devices (HTML, JS, session
 * check, first page of devices) to the first row, measured from the test. The JS shipped, gzipped, beside them.
 */
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { chromiumAvailable, launchChromium, login, watchedPage } from '../console/browser.js';
import { PASSWORD, USERS, startConsoleRig } from '../console/console-rig.js';

export interface ConsoleFigures {
  devices: number;
  runs: number;
  /** Navigate to #/devices -> first row painted (median, and each run), ms. */
  first_render_ms: number;
  first_render_runs_ms: number[];
  /** page.goto(/console/#/devices) with a session -> first row visible (median), ms. */
  cold_load_ms: number;
  /** GET /devices?limit=50 from the page (median), ms. */
  api_page_ms: number;
  js_gzip_bytes: number;
  seed_s: number;
}

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : (s[Math.floor((s.length - 1) / 2)] as number);
};
const round = (x: number): number => Math.round(x * 10) / 10;

/** In the page: go to #/devices and resolve with the ms until a row is in the table and a frame was painted. */
const NAVIGATE = `new Promise((resolve) => {
  const t0 = performance.now();
  const done = () => requestAnimationFrame(() => resolve(performance.now() - t0));
  const obs = new MutationObserver(() => {
    if (document.querySelector('tbody tr td a')) { obs.disconnect(); done(); }
  });
  obs.observe(document.body, { childList: true, subtree: true });
  location.hash = '#/devices';
})`;

const API_PAGE = `(async () => {
  const t0 = performance.now();
  const r = await fetch('/devices?limit=50&offset=0', { headers: { 'X-Console': '1' } });
  await r.json();
  return performance.now() - t0;
})()`;

export async function benchConsole(options: { devices: number; runs: number; log: (s: string) => void }): Promise<ConsoleFigures | { skipped: string }> {
  if (!chromiumAvailable()) return { skipped: 'no chromium (apt-get install chromium)' };
  const t0 = performance.now();
  const rig = await startConsoleRig({ devices: options.devices });
  const seedS = round((performance.now() - t0) / 1000);
  options.log(`console: ${options.devices} devices registered and serve started in ${seedS} s; measuring ...`);
  const browser = await launchChromium();
  try {
    const w = await watchedPage(browser);
    const page = w.page;
    await login(page, rig.base, USERS.operator, PASSWORD);
    await page.locator('tbody tr td a').first().waitFor();
    const firstRender: number[] = [];
    const api: number[] = [];
    for (let i = 0; i < options.runs; i++) {
      // Away from the fleet page (the rollouts page, empty), then back: a fresh mount and a fresh API page.
      await page.evaluate(`location.hash = '#/rollouts'`);
      await page.getByRole('heading', { name: 'Rollouts' }).waitFor();
      firstRender.push((await page.evaluate(NAVIGATE)) as number);
      api.push((await page.evaluate(API_PAGE)) as number);
    }
    const cold: number[] = [];
    for (let i = 0; i < Math.max(3, Math.ceil(options.runs / 2)); i++) {
      const c0 = performance.now();
      // A new query string: a real load (a new hash alone would be a same-document navigation).
      await page.goto(`${rig.base}/console/?run=${i}#/devices`);
      await page.locator('tbody tr td a').first().waitFor();
      cold.push(performance.now() - c0);
    }
    const js = await readFile(join(ROOT, 'dist/console/app.js'));
    return {
      devices: options.devices,
      runs: options.runs,
      first_render_ms: round(median(firstRender)),
      first_render_runs_ms: firstRender.map(round),
      cold_load_ms: round(median(cold)),
      api_page_ms: round(median(api)),
      js_gzip_bytes: gzipSync(js, { level: 9 }).length,
      seed_s: seedS,
    };
  } finally {
    await browser.close();
    await rig.close();
  }
}
