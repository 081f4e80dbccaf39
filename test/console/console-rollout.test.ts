/**
 * A rollout started from the console against real agents on mosquitto, served by a real `serve --http` child. Each
 * board is the bundled `sensor-agent run` (build/host/sensor-agent.mjs, as on a board) provisioned as an operator
 * does it: `provision-server bundle` (config, trust anchors, a one-time token), first start enrolls it over the
 * broker (test/console/console-rig.ts, `agents`). From the page: select the boards, dry run, confirm a selftest at
 * 12/min; the rollout page follows it live over /events (no reload), a pause right after the first board applied
 * holds it, resume finishes it. Each agent's own state (`sensor-agent status --json`) shows it applied that
 * command exactly once (last_seq up by one, the rollout's jti); the audit names the operator. The agents are
 * stopped with SIGTERM (awaited) after the suite.
 */
import { expect } from 'chai';
import type { Browser, Page } from 'playwright-core';
import type { StatusReport } from '../../agent/commands/status.js';
import { agentStatus } from '../helpers/agent-process.js';
import { mosquittoAvailable } from '../helpers/mosquitto-process.js';
import { launchChromium, login, needChromium, watchedPage, type WatchedPage } from './browser.js';
import { PASSWORD, USERS, startConsoleRig, type ConsoleRig } from './console-rig.js';

const BOARDS = 4;
/** Commands per minute: one every 5 s, so a pause right after the first applied lands before the second is sent. */
const RATE = 12;
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
    [rig, browser] = await Promise.all([startConsoleRig({ agents: BOARDS, mosquitto: true }), launchChromium()]);
    w = await watchedPage(browser);
    page = w.page;
    await login(page, rig.base, USERS.operator, PASSWORD);
  });

  after(async () => {
    await browser?.close();
    // SIGTERM to each agent, awaited (each exits 0); then serve, the broker and the directory.
    const codes = await rig?.stopAgents();
    await rig?.close();
    if (codes) expect(codes, 'agent exit codes after SIGTERM').to.deep.equal(Array(BOARDS).fill(0));
  });

  type AgentView = Pick<StatusReport, 'last_seq' | 'last_command' | 'last_selftest'>;
  /** Each agent's own view (`sensor-agent status --json`, read from its state directory), in board order. */
  const statuses = (): Promise<AgentView[]> =>
    Promise.all(
      rig.agents.map(async (a): Promise<AgentView> => {
        const r = await agentStatus(a.configPath);
        if (typeof r.last_seq !== 'number') throw new Error(`${a.id}: status without last_seq: ${JSON.stringify(r)}`);
        return {
          last_seq: r.last_seq,
          last_command: r.last_command as StatusReport['last_command'],
          last_selftest: r.last_selftest as StatusReport['last_selftest'],
        };
      }),
    );

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
    const before = await statuses();
    await page.getByRole('checkbox', { name: 'Select all on this page' }).check();
    await page.getByRole('button', { name: 'Start rollout…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByLabel('Action').selectOption('selftest');
    await dialog.getByLabel('Rate per minute').fill(String(RATE));
    await dialog.getByRole('button', { name: 'Preview (dry run)' }).click();
    await dialog.getByRole('heading', { name: `Dry run: selftest to ${BOARDS} device(s)` }).waitFor();
    expect(await dialog.getByText(`${BOARDS} online, 0 offline, 0 never reported.`).count()).to.equal(1);
    expect(
      (await statuses()).map((s) => s.last_seq),
      'the dry run sent nothing',
    ).to.deep.equal(before.map((s) => s.last_seq));
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
    for (const deadline = Date.now() + 30_000; (await applied()) < 1; await sleep(100)) {
      if (Date.now() > deadline) throw new Error('no board applied within 30 s');
    }
    await page.getByRole('button', { name: 'Pause' }).click();
    await page.locator('.rollout-state .badge', { hasText: 'paused' }).waitFor();
    await sleep(1500); // what was in flight lands
    const held = await applied();
    await sleep(5500); // at 12/min at least one more would have gone out
    expect(await applied(), 'nothing more applied while paused').to.equal(held);
    expect(held).to.be.within(1, BOARDS - 1);
    // The agents agree: exactly those the page counts applied something while it was paused.
    const whilePaused = await statuses();
    expect(whilePaused.filter((s, i) => s.last_seq !== before[i]!.last_seq).length, 'agents that applied before the pause').to.equal(held);

    await page.getByRole('button', { name: 'Resume' }).click();
    await page.locator('.rollout-state .badge', { hasText: 'running' }).waitFor();
    await page.locator('.big-progress .progress-text', { hasText: `${BOARDS}/${BOARDS}` }).waitFor({ timeout: 60_000 });
    await page.locator('.rollout-state .badge', { hasText: 'completed' }).waitFor({ timeout: 30_000 });
    expect(await applied()).to.equal(BOARDS);
    expect(await page.evaluate('window.__sameDocument')).to.equal(1);
    // The page did not poll the rollout: a handful of target rereads when counts moved, not one a second.
    expect(rolloutRequests).to.be.below(BOARDS + 4);
    // Every agent applied the rollout's command once, by its own state: last_seq up by exactly one, its last
    // command the selftest with the jti the server recorded for that board, and a self-test recorded.
    const rolloutId = /#\/rollouts\/([^/?]+)/.exec(page.url())![1]!;
    const detail = (await page.evaluate(`fetch('/rollouts/${rolloutId}?targets=1', { headers: { 'X-Console': '1' } }).then((r) => r.json())`)) as {
      targets?: { device_id: string; jti?: string | null; state: string }[];
    };
    const after = await statuses();
    rig.agents.forEach((a, i) => {
      const s = after[i]!;
      expect(s.last_seq, `${a.id} last_seq`).to.equal(before[i]!.last_seq + 1);
      expect(s.last_command, a.id).to.deep.include({ action: 'selftest', status: 'applied', seq: s.last_seq });
      const target = detail.targets?.find((t) => t.device_id === a.id);
      expect(target, `${a.id} in the rollout's targets`).to.deep.include({ state: 'applied', jti: s.last_command!.jti });
      expect(s.last_selftest?.ok, `${a.id} self-test`).to.equal(true);
    });

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
