// Re-exported so `import { Switchboard, mintToken, verifyWebhook } from "@switchboard/server"` is the whole API.
export { Switchboard } from "./client.js";
export type { SwitchboardOptions, RetryOptions } from "./client.js";
export { mintToken } from "./token.js";
export type { TokenOptions } from "./token.js";
export { verifyWebhook, verifyWebhookEvents, verifyWebhookEventsRequest, verifyWebhookRequest } from "./webhook.js";
export type { HeaderSource } from "./webhook.js";
export { SwitchboardError, WebhookVerificationError, isRetryableStatus } from "./errors.js";
export { isFailure } from "./types.js";
export type * from "./types.js";
