/** The error a promise rejects with (the async form of chai's `expect(fn).to.throw()`); fails the test when it resolves. */
export async function rejection(p: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await p;
  } catch (e) {
    if (e instanceof Error) return e;
    throw new Error(`rejected with a non-Error: ${String(e)}`, { cause: e });
  }
  throw new Error('expected a rejection; the promise resolved');
}
