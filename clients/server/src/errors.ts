/**
 * Every failure the SDK reports is a `SwitchboardError`: an HTTP error answer from the Worker (with its
 * stable `error` code and HTTP `status`), a network failure after the last retry (`code: "network_error"`,
 * `status: 0`), a request that took longer than `requestTimeoutMs` (`"request_timeout"`), an answer that is
 * not the JSON the API promises (`"invalid_response"`), or a bad argument caught before any request
 * (`"invalid_argument"`). Switch on `code`; the table of server codes is in the main README.
 */
export class SwitchboardError extends Error {
  override readonly name = "SwitchboardError";
  /** The server's `error` code (e.g. `invalid_user_id`, `forbidden`, `unavailable`) or one of the SDK's own. */
  readonly code: string;
  /** The HTTP status, or 0 when no HTTP answer was received. */
  readonly status: number;
  /** The parsed error body, when the server sent one. */
  readonly body?: unknown;
  /** How many HTTP attempts were made (more than 1 after retries). */
  readonly attempts: number;

  constructor(code: string, message: string, options: { status?: number; body?: unknown; attempts?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.status = options.status ?? 0;
    this.body = options.body;
    this.attempts = options.attempts ?? 0;
  }

  /** Whether retrying the same request later could succeed (network errors, timeouts, 429 and 5xx). */
  get retryable(): boolean {
    if (this.status === 0) return this.code === "network_error" || this.code === "request_timeout";
    return isRetryableStatus(this.status, this.code);
  }
}

/** A webhook request that failed verification: a bad or missing signature, a stale timestamp, or a body that is not an event. */
export class WebhookVerificationError extends Error {
  override readonly name = "WebhookVerificationError";
}

/** 408, 429 and 5xx are worth retrying, except a misconfigured server (a setting is wrong: retries cannot fix it). */
export function isRetryableStatus(status: number, code?: string): boolean {
  if (status === 408 || status === 429) return true;
  return status >= 500 && status <= 599 && status !== 501 && code !== "server_misconfigured";
}
