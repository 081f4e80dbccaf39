/**
 * The one error root, and the typed refusals of the wire protocol.
 *
 * Every refusal anywhere (protocol, agent, server, CLI) is a CodedError: a
 * stable `code` (`E_...`) that logs, acks, exit statuses and HTTP answers rely
 * on, a message for humans and optional `details`. Errors never carry an exit
 * or HTTP status: the CLI edge (lib/cli.ts and each program's exit table) and
 * the HTTP layer (server/http/http-api.ts) map codes to those.
 */

/** The root of every coded refusal. */
export class CodedError<C extends string = string> extends Error {
  override readonly name: string = 'CodedError';
  readonly code: C;
  /** Machine-readable facts about the refusal (a path, a pin), when there are any. */
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(code: C, message: string, options?: { cause?: unknown; details?: Readonly<Record<string, unknown>> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options?.details;
  }
}

export function isCodedError(err: unknown): err is CodedError {
  return err instanceof CodedError;
}

export const PROTOCOL_ERROR_CODES = {
  E_TOO_LARGE: 'message exceeds the size cap',
  E_MALFORMED: 'not a well-formed compact JWE/JWS or header',
  E_ALG: 'algorithm not in the allow-list',
  E_ZIP: 'compressed payloads (zip) are refused',
  E_KID: 'key id unknown to the receiver',
  E_DECRYPT: 'decryption failed',
  E_SIGNATURE: 'signature missing, invalid or from a key that is not pinned',
  E_CLAIMS: 'a required claim is missing or has the wrong type',
  E_AUDIENCE: 'message addressed to someone else (aud, device id or topic)',
  E_ISSUER: 'message from an unexpected issuer',
  E_EXPIRED: 'message has expired',
  E_NOT_YET_VALID: 'message issued in the future',
  E_REPLAY: 'sequence number or jti already seen',
  E_ACTION: 'unknown action',
  E_PARAMS: 'params invalid for the action',
  E_KEY: 'key material invalid or of the wrong type',
} as const;

export type ProtocolErrorCode = keyof typeof PROTOCOL_ERROR_CODES;

/** What is known of an authenticated message that was refused: enough to address a `rejected` ack. */
export interface RefusedMessage {
  jti?: string;
  seq?: number;
  action?: string;
  signerKid?: string;
  /**
   * True when the claims were well formed and addressed to this receiver by
   * the expected issuer (aud, device_id, topic, iss all checked): a command
   * the receiver must treat as decided (recorded, never applied later).
   */
  addressed?: boolean;
}

export class ProtocolError extends CodedError<ProtocolErrorCode> {
  override readonly name = 'ProtocolError';
  /** Set only when the message was authenticated (signature verified) before it was refused. */
  readonly refused: RefusedMessage | undefined;

  constructor(code: ProtocolErrorCode, message?: string, options?: { cause?: unknown; refused?: RefusedMessage }) {
    super(code, message ?? PROTOCOL_ERROR_CODES[code], options?.cause === undefined ? undefined : { cause: options.cause });
    this.refused = options?.refused;
  }

  /** The same refusal, marked as concerning an authenticated message. */
  withRefused(refused: RefusedMessage): ProtocolError {
    return new ProtocolError(this.code, this.message, { cause: this.cause, refused });
  }
}

export function isProtocolError(err: unknown): err is ProtocolError {
  return err instanceof ProtocolError;
}
