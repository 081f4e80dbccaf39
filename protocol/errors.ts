/**
 * Typed refusals of the wire protocol. Every refusal carries a stable `code`
 * that logs, acks and exit paths can rely on; the message is for humans.
 */
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

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  readonly code: ProtocolErrorCode;
  /** Set only when the message was authenticated (signature verified) before it was refused. */
  readonly refused: RefusedMessage | undefined;

  constructor(code: ProtocolErrorCode, message?: string, options?: { cause?: unknown; refused?: RefusedMessage }) {
    super(message ?? PROTOCOL_ERROR_CODES[code], options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
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
