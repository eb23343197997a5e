import { SignJWT } from "jose";
import { SwitchboardError } from "./errors.js";

/** What a token may do. At least one of `userId` and `publish` is needed. */
export interface TokenOptions {
  /** The `JWT_SECRET` the Worker verifies with (HS256). */
  secret: string;
  /** A client (connect) token for this user: the `userId` claim. */
  userId?: string;
  /** A backend token: `scope: "publish"` (publish, connection API, members API). */
  publish?: boolean;
  /** Channels the connection may join: exact names (`"lobby"`) and prefix patterns (`"room:*"`, `"*"`); at most 32. */
  channels?: string[];
  /** Channels the connection may publish to (client events), in the same form. */
  publishChannels?: string[];
  /** Lifetime in seconds (default 3600). The Worker closes the connection with 4001 when it passes. */
  expiresIn?: number;
  /** Any other claims (e.g. `sub`); they cannot override the ones above. */
  claims?: Record<string, unknown>;
}

const MAX_GRANTS = 32; // the Worker's limit on `channels` / `publishChannels` entries

function grants(name: string, list: string[] | undefined): string[] | undefined {
  if (list === undefined) return undefined;
  if (!Array.isArray(list) || list.length === 0 || list.length > MAX_GRANTS || list.some((c) => typeof c !== "string" || !c)) {
    throw new SwitchboardError("invalid_argument", `${name} must be 1-${MAX_GRANTS} non-empty channel names or patterns`);
  }
  return list;
}

/**
 * Mints an HS256 JWT the Worker accepts (with `jose`), for a browser (`userId`, optional channel grants) or
 * for a backend (`publish: true`). Runs anywhere WebCrypto does: Node 20+, Workers, Deno, Bun.
 *
 * ```ts
 * const clientToken = await mintToken({ secret, userId: "alice", channels: ["room:*"], expiresIn: 900 });
 * const publishToken = await mintToken({ secret, publish: true });
 * ```
 */
export async function mintToken(options: TokenOptions): Promise<string> {
  const { secret, userId, publish, expiresIn = 3600 } = options;
  if (typeof secret !== "string" || !secret) throw new SwitchboardError("invalid_argument", "secret (the Worker's JWT_SECRET) is required");
  if (userId === undefined && !publish) throw new SwitchboardError("invalid_argument", "a token needs a userId (client) or publish: true (backend)");
  if (userId !== undefined && (typeof userId !== "string" || !userId.trim() || new TextEncoder().encode(userId).length > 256)) {
    throw new SwitchboardError("invalid_argument", "userId must be a non-blank string of at most 256 bytes");
  }
  if (!Number.isInteger(expiresIn) || expiresIn <= 0) throw new SwitchboardError("invalid_argument", "expiresIn must be a positive whole number of seconds");
  const claims: Record<string, unknown> = { ...options.claims };
  if (userId !== undefined) claims.userId = userId;
  if (publish) claims.scope = "publish";
  const channels = grants("channels", options.channels);
  const publishChannels = grants("publishChannels", options.publishChannels);
  if (channels) claims.channels = channels;
  if (publishChannels) claims.publishChannels = publishChannels;
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT(claims)
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setIssuedAt(now)
    .setExpirationTime(now + expiresIn)
    .sign(new TextEncoder().encode(secret));
}
