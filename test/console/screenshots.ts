/**
 * `npm run screenshots`: docs/console/{login,fleet,device,rollout,enrollment,audit,users}.png from a seeded fleet
 * (registered devices, simulated boards on the broker that report in and answer a rollout, an enrollment token,
 * an API token), taken in chromium at 1400x900 against a real `serve --http`.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromiumAvailable, launchChromium, login, watchedPage } from './browser.js';
import { PASSWORD, USERS, startConsoleRig } from './console-rig.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const OUT = join(ROOT, 'docs/console');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  if (!chromiumAvailable()) throw new Error('chromium is needed for the screenshots (apt-get install chromium)');
  await mkdir(OUT, { recursive: true });
  const rig = await startConsoleRig({ devices: 140, boards: 8 });
  const browser = await launchChromium();
  try {
    const token = (await readFile(join(rig.dataDir, 'http.token'), 'utf8')).trim();
    const call = async (method: string, path: string, body?: unknown): Promise<Record<string, unknown>> => {
      const res = await fetch(`${rig.base}${path}`, {
        method,
        headers: { Authorization: `Bearer ${token}`, ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      const data = (await res.json()) as Record<string, unknown>;
      if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(data)}`);
      return data;
    };
    // A finished rollout to the boards, and one still paused; a command to a device; tokens.
    const boards = rig.boards.map((b) => b.id);
    const done = await call('POST', '/rollouts', { action: 'selftest', selector: { tag: 'boards' }, confirm: boards.length });
    await call('POST', '/rollouts', { action: 'selftest', selector: { devices: ['dev-00003', 'dev-00004', 'dev-00005'] }, rate_per_min: 1, confirm: 3 });
    for (let i = 0; i < 100; i++) {
      const r = await call('GET', `/rollouts/${String(done.id)}`);
      if (r.finished_at !== null) break;
      await sleep(200);
    }
    await call('POST', `/devices/${boards[0]}/commands`, { action: 'selftest' });
    await call('POST', '/devices/tags', { devices: boards.slice(0, 4), add: ['canary'] });
    await call('POST', '/enrollment/tokens', { device_id: 'sensor-new-01', user_id: 'greenhouse' });
    await call('POST', '/enrollment/tokens', { device_id: 'sensor-new-02', user_id: 'greenhouse', ttl_s: 3600 });
    await call('POST', '/api-tokens', { operator: USERS.operator, label: 'ci deploys' });
    await sleep(800);

    const w = await watchedPage(browser);
    const page = w.page;
    const shot = async (name: string): Promise<void> => {
      await sleep(300);
      await page.screenshot({ path: join(OUT, `${name}.png`) });
      process.stdout.write(`docs/console/${name}.png\n`);
    };
    await page.goto(`${rig.base}/console/`);
    await page.getByLabel('Name').fill(USERS.admin);
    await shot('login');
    await login(page, rig.base, USERS.admin, PASSWORD);
    await page.goto(`${rig.base}/console/#/devices?sort=last_seen&dir=desc`);
    await page.locator('tbody tr').first().waitFor();
    await page.getByRole('checkbox', { name: `Select ${boards[1]}` }).check();
    await page.getByRole('checkbox', { name: `Select ${boards[2]}` }).check();
    await shot('fleet');
    await page.goto(`${rig.base}/console/#/devices/${boards[0]}`);
    await page.locator('tbody tr', { hasText: 'selftest' }).first().waitFor();
    await shot('device');
    await page.goto(`${rig.base}/console/#/rollouts/${String(done.id)}`);
    await page.locator('.big-progress').waitFor();
    await shot('rollout');
    await page.goto(`${rig.base}/console/#/enrollment`);
    await page.locator('tbody tr').first().waitFor();
    await shot('enrollment');
    await page.goto(`${rig.base}/console/#/audit`);
    await page.locator('tbody tr').first().waitFor();
    await shot('audit');
    await page.goto(`${rig.base}/console/#/users`);
    await page.locator('tbody tr').first().waitFor();
    await shot('users');
    const errors = w.errors.filter((e) => !/status of 401/.test(e));
    if (errors.length) throw new Error(`the page reported errors: ${errors.join('; ')}`);
  } finally {
    await browser.close();
    await rig.close();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`screenshots: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
