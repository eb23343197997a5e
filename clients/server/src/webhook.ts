import { Webhook, WebhookVerificationError as StandardError } from "standardwebhooks";
import { WebhookVerificationError } from "./errors.js";
import type { SwitchboardEvent } from "./types.js";

/** Request headers as a fetch `Headers`, or a Node-style object (`req.headers`). */
export type HeaderSource = Headers | Record<string, string | string[] | undefined>;

const NAMES = ["webhook-id", "webhook-timestamp", "webhook-signature"] as const;

function pick(headers: HeaderSource): Record<string, string> {
  const out: Record<string, string> = {};
  const get =
    typeof (headers as Headers).get === "function"
      ? (n: string) => (headers as Headers).get(n) ?? undefined
      : (n: string) => {
          const key = Object.keys(headers).find((k) => k.toLowerCase() === n);
          const v = key === undefined ? undefined : (headers as Record<string, string | string[] | undefined>)[key];
          return Array.isArray(v) ? v.join(" ") : v;
        };
  for (const n of NAMES) {
    const v = get(n);
    if (v === undefined) throw new WebhookVerificationError(`missing ${n} header`);
    out[n] = v;
  }
  return out;
}

/**
 * The Standard Webhooks verifier for `WEBHOOK_SECRET`. The Worker accepts `whsec_<base64>` (decoded, as
 * every Standard Webhooks library does) or any other string, used as raw bytes: the official package
 * takes the latter with `format: "raw"`.
 */
function verifier(secret: string): Webhook {
  if (typeof secret !== "string" || !secret) throw new WebhookVerificationError("the webhook secret is empty");
  // Raw keys as UTF-8 bytes, as the Worker reads them (the package would take a string's char codes).
  return secret.startsWith("whsec_") ? new Webhook(secret) : new Webhook(new TextEncoder().encode(secret), { format: "raw" });
}

/**
 * Verifies a Switchboard webhook request with the official `standardwebhooks` package (signature over
 * `{webhook-id}.{webhook-timestamp}.{body}`, timestamps older or newer than 5 minutes refused) and returns
 * the typed CloudEvent. Throws `WebhookVerificationError` otherwise.
 *
 * `body` must be the raw request body exactly as received (not re-serialized JSON).
 *
 * ```ts
 * const event = verifyWebhook(process.env.WEBHOOK_SECRET, rawBody, req.headers);
 * if (event.type === "switchboard.client.message.v1") handle(event.subject, event.data.data);
 * ```
 */
export function verifyWebhook(secret: string, body: string, headers: HeaderSource): SwitchboardEvent {
  const event = verified(secret, body, headers);
  if (!isEvent(event)) throw new WebhookVerificationError("webhook refused: the body is not a Switchboard CloudEvent");
  return event;
}

/**
 * `verifyWebhook` for an endpoint that may get CloudEvents JSON batches (`WEBHOOK_BATCH_MAX` > 1, and
 * always with `PRESENCE_WEBHOOKS=on`): verifies the request and returns its events, oldest first, one
 * for a single structured event. Deduplicate on each event's `id`.
 *
 * ```ts
 * for (const event of verifyWebhookEvents(process.env.WEBHOOK_SECRET, rawBody, req.headers)) {
 *   if (event.type === "switchboard.user.offline.v1") markOffline(event.subject, event.data.at);
 * }
 * ```
 */
export function verifyWebhookEvents(secret: string, body: string, headers: HeaderSource): SwitchboardEvent[] {
  const parsed = verified(secret, body, headers);
  const events: unknown[] = Array.isArray(parsed) ? parsed : [parsed];
  if (!events.every(isEvent)) {
    throw new WebhookVerificationError("webhook refused: the body is not a Switchboard CloudEvent or batch of them");
  }
  return events as SwitchboardEvent[];
}

/** `verifyWebhookEvents` for fetch-style handlers. */
export async function verifyWebhookEventsRequest(secret: string, request: Request): Promise<SwitchboardEvent[]> {
  return verifyWebhookEvents(secret, await request.text(), request.headers);
}

function verified(secret: string, body: string, headers: HeaderSource): unknown {
  const wh = verifier(secret);
  try {
    return wh.verify(body, pick(headers));
  } catch (e) {
    if (e instanceof WebhookVerificationError) throw e;
    const why = e instanceof StandardError || e instanceof Error ? e.message : String(e);
    throw new WebhookVerificationError(`webhook refused: ${why}`, { cause: e });
  }
}

/** `verifyWebhook` for fetch-style handlers (Workers, Deno, Bun, Hono, Next.js route handlers). */
export async function verifyWebhookRequest(secret: string, request: Request): Promise<SwitchboardEvent> {
  return verifyWebhook(secret, await request.text(), request.headers);
}

function isEvent(x: unknown): x is SwitchboardEvent {
  const e = x as Record<string, unknown> | null;
  return (
    typeof e === "object" && e !== null && e.specversion === "1.0" && typeof e.id === "string" &&
    typeof e.type === "string" && e.type.startsWith("switchboard.") && typeof e.subject === "string" &&
    typeof e.data === "object" && e.data !== null
  );
}
