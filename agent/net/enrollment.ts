/**
 * Enrollment: a board with an enrollment token and no `request` yet
 * generates its keys if absent, then publishes an enrollment (signed by its
 * new signing key, encrypted to the server's pinned key, carrying the token)
 * to `{prefix}/{id}/enroll`, at each (re)subscription and then with backoff
 * until the server's sealed `request` command arrives and is applied; then
 * the token file is securely removed.
 */
import { readFile } from 'node:fs/promises';
import { CodedError, sealEnrollment, toPublicJwk } from '../../protocol/index.js';
import { errnoCode, removeFileSecurely } from '../../lib/durable-file.js';
import { backoffDelay } from './mqtt-session.js';
import type { AgentRuntime } from '../runtime.js';

export const MAX_TOKEN_BYTES = 256;

export class EnrollmentError extends CodedError<'E_TOKEN'> {
  override readonly name = 'EnrollmentError';
}

/** The token in the file, or undefined when there is no file. Throws E_TOKEN when it is unusable. */
export async function readEnrollmentToken(path: string): Promise<string | undefined> {
  let text: string;
  try {
    const data = await readFile(path);
    if (data.length > MAX_TOKEN_BYTES * 4) throw new EnrollmentError('E_TOKEN', `enrollment token file ${path} is too large to be a token`);
    text = data.toString('utf8').trim();
  } catch (err) {
    if (err instanceof EnrollmentError) throw err;
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw new EnrollmentError('E_TOKEN', `cannot read the enrollment token ${path}: ${(err as Error).message}`);
  }
  if (text === '' || text.length > MAX_TOKEN_BYTES || /\s/.test(text)) {
    throw new EnrollmentError('E_TOKEN', `enrollment token file ${path} does not hold one token (1-${MAX_TOKEN_BYTES} characters, no spaces)`);
  }
  return text;
}

export interface EnrollmentOptions {
  /** First retry delay, ms (default 5000). */
  retryMinMs?: number;
  /** Retry cap, ms (default 300000). */
  retryMaxMs?: number;
}

export const DEFAULT_ENROLLMENT_RETRY: Required<EnrollmentOptions> = { retryMinMs: 5000, retryMaxMs: 300_000 };

export class Enrollment {
  #timer: NodeJS.Timeout | undefined;
  #attempt = 0;
  #active = false;

  constructor(
    private readonly rt: AgentRuntime,
    private readonly token: string,
    private readonly options: EnrollmentOptions = {},
  ) {}

  get active(): boolean {
    return this.#active;
  }

  /** Starts (or restarts after a reconnect) sending: now, then with backoff. */
  kick(): void {
    this.#active = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#attempt = 0;
    void this.#send();
  }

  stop(): void {
    this.#active = false;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** The `request` was applied: stop and securely remove the token file. */
  async complete(): Promise<void> {
    this.stop();
    try {
      if (await removeFileSecurely(this.rt.config.enrollment_token)) this.rt.log.info('enrollment token removed', { file: this.rt.config.enrollment_token });
    } catch (err) {
      this.rt.log.error('could not remove the used enrollment token; remove it by hand', {
        file: this.rt.config.enrollment_token,
        reason: (err as Error).message,
      });
    }
  }

  async #send(): Promise<void> {
    const rt = this.rt;
    if (!this.#active || rt.stopping) return;
    const signing = rt.keystore.signingKey;
    const encryption = rt.keystore.encryptionKey;
    if (signing && encryption && rt.session.ready) {
      try {
        const { token } = await sealEnrollment(
          { deviceId: rt.deviceId, serverId: rt.config.server_id, token: this.token, signing: toPublicJwk(signing), encryption: toPublicJwk(encryption) },
          { signer: signing, recipient: rt.trust.encryption },
        );
        await rt.session.publish(rt.topics.enroll, token);
        rt.log.info("enrollment sent; waiting for the server's request", { attempt: this.#attempt + 1, topic: rt.topics.enroll });
      } catch (err) {
        rt.log.warn('enrollment not sent', { reason: (err as Error).message });
      }
    }
    if (!this.#active || rt.stopping) return;
    const delay = backoffDelay(
      this.#attempt,
      this.options.retryMinMs ?? DEFAULT_ENROLLMENT_RETRY.retryMinMs,
      this.options.retryMaxMs ?? DEFAULT_ENROLLMENT_RETRY.retryMaxMs,
    );
    this.#attempt += 1;
    this.#timer = setTimeout(() => void this.#send(), delay);
  }
}
