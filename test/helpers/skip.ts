/**
 * Skipping with a reason. Mocha's `this.skip()` prints a pending test with no
 * word on why; `skipBecause` puts the reason (which tool is missing, what it
 * needs) into the title of each test it skips, so the report says it:
 *   - refuses a forged delete [skipped: mosquitto not found (apt-get install -y mosquitto ...)]
 * Called in a `before` hook it marks every test of the suite; in `beforeEach`
 * or a test, that test.
 */
export function skipBecause(ctx: Mocha.Context, reason: string): never {
  const note = ` [skipped: ${reason}]`;
  const running = ctx.test;
  // In a "before all" hook mocha also sets currentTest (to the first test): the whole suite is skipped.
  if (running && /^"before all" hook/.test(running.title) && running.parent) markAll(running.parent, note);
  else if (ctx.currentTest) ctx.currentTest.title += note;
  else if (running) running.title += note;
  return ctx.skip();
}

function markAll(suite: Mocha.Suite, note: string): void {
  for (const t of suite.tests) t.title += note;
  for (const s of suite.suites) markAll(s, note);
}

/** The reason to give when mosquitto is missing. */
export const NO_MOSQUITTO =
  'mosquitto not found at /usr/sbin/mosquitto, /usr/bin/mosquitto or /usr/local/sbin/mosquitto (apt-get install -y mosquitto; REQUIRE_MOSQUITTO=1 makes this a failure)';
/** The reason to give when a tmpfs cannot be mounted. */
export const NO_TMPFS = 'cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN; REQUIRE_TMPFS=1 makes this a failure)';
