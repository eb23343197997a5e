#!/usr/bin/env node
// Publishes an envelope from the terminal and prints what every connection acked.
//   node scripts/publish.mjs --user alice --type message --payload '{"text":"hi"}'
//   node scripts/publish.mjs --channel room:42 --type chat --payload '{"text":"hi all"}'
//   options: --url http://127.0.0.1:8787 (or SWITCHBOARD_URL)   --timeout-ms 5000   --connection ID
//            --idempotency-key KEY   --json (print the raw response)
// The publish token is minted from JWT_SECRET in .dev.vars (or the environment), as scripts/token.mjs does.
import path from "node:path";
import { fileURLToPath } from "node:url";
import { mint, readSecret } from "./token.mjs";

const USAGE = `usage: node scripts/publish.mjs (--user ID | --channel NAME) [--type TYPE] [--payload JSON] [--url URL]
                                [--timeout-ms N] [--connection ID] [--idempotency-key KEY] [--json]
  --user             the userId to publish to
  --channel          or: the channel to publish to (every joined connection of every member)
  --type             the envelope type (default "message")
  --payload          any JSON value (default null), e.g. '{"text":"hi"}'
  --url              the Worker (default $SWITCHBOARD_URL or http://127.0.0.1:\${PORT:-8787})
  --timeout-ms       how long the server waits for acks (default: the server's ACK_TIMEOUT_MS)
  --connection       deliver to this connection only
  --idempotency-key  makes a retry safe: the same key is delivered once
  --json             print the server's JSON response instead of the summary`;

class UsageError extends Error {}

export function parseArgs(argv) {
  const args = { type: "message", url: process.env.SWITCHBOARD_URL || `http://127.0.0.1:${process.env.PORT || 8787}` };
  const value = (i, name) => {
    if (i >= argv.length || argv[i].startsWith("--")) throw new UsageError(`${name} needs a value`);
    return argv[i];
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [flag, inline] = a.startsWith("--") && a.includes("=") ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)] : [a, undefined];
    const take = () => (inline !== undefined ? inline : value(++i, flag));
    switch (flag) {
      case "--user": args.user = take(); break;
      case "--channel": args.channel = take(); break;
      case "--type": args.type = take(); break;
      case "--payload": args.payloadText = take(); break;
      case "--url": args.url = take(); break;
      case "--timeout-ms": args.timeoutText = take(); break;
      case "--connection": args.connectionId = take(); break;
      case "--idempotency-key": args.idempotencyKey = take(); break;
      case "--json": args.json = true; break;
      case "--help": case "-h": args.help = true; break;
      default: throw new UsageError(`unknown argument ${a}`);
    }
  }
  if (args.help) return args;
  if (args.user !== undefined && args.channel !== undefined) throw new UsageError("give --user or --channel, not both");
  if (args.channel !== undefined) {
    if (!args.channel.trim()) throw new UsageError("--channel must not be empty");
  } else if (!args.user || !args.user.trim()) throw new UsageError("--user (or --channel) is required");
  if (!args.type.trim()) throw new UsageError("--type must not be empty");
  if (args.payloadText !== undefined) {
    try {
      args.payload = JSON.parse(args.payloadText);
    } catch (e) {
      throw new UsageError(`--payload is not valid JSON (${e.message}); quote it for the shell, e.g. --payload '{"text":"hi"}'`);
    }
  }
  if (args.timeoutText !== undefined) {
    if (!/^\d+$/.test(args.timeoutText)) throw new UsageError(`--timeout-ms must be a whole number of milliseconds, got ${JSON.stringify(args.timeoutText)}`);
    args.timeoutMs = Number(args.timeoutText);
  }
  try {
    const u = new URL(args.url);
    if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error();
    args.url = u.toString().replace(/\/$/, "");
  } catch {
    throw new UsageError(`--url must be an http(s) URL, got ${JSON.stringify(args.url)}`);
  }
  return args;
}

async function main(argv) {
  const args = parseArgs(argv);
  if (args.help) return console.log(USAGE);
  const now = Math.floor(Date.now() / 1000);
  const token = mint({ sub: "publish-cli", scope: "publish", iat: now, exp: now + 120 }, readSecret());
  const body = args.channel !== undefined ? { channel: args.channel, type: args.type } : { userId: args.user, type: args.type };
  if ("payload" in args) body.payload = args.payload;
  if (args.timeoutMs !== undefined) body.timeoutMs = args.timeoutMs;
  if (args.connectionId) body.connectionId = args.connectionId;
  const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
  if (args.idempotencyKey) headers["idempotency-key"] = args.idempotencyKey;

  let res;
  try {
    res = await fetch(`${args.url}/publish`, { method: "POST", headers, body: JSON.stringify(body) });
  } catch (e) {
    const why = e.cause?.code || e.cause?.message || e.message;
    throw new Error(`cannot reach ${args.url} (${why}): is the server running? Start one with \`make dev\` or \`make demo\`, or pass --url`);
  }
  const text = await res.text();
  let out;
  try {
    out = JSON.parse(text);
  } catch {
    throw new Error(`${args.url}/publish answered ${res.status} with something that is not JSON: ${text.slice(0, 200)}`);
  }
  if (!res.ok) {
    const hint = res.status === 401 ? " (does the server use the JWT_SECRET in .dev.vars?)" : "";
    throw new Error(`the server refused the publish: ${res.status} ${out.error}: ${out.message}${hint}`);
  }
  if (args.json) return console.log(JSON.stringify(out, null, 2));
  if (out.totals && args.channel !== undefined) {
    const t = out.totals;
    console.log(`published to ${args.channel}: ${t.users} member(s), ${t.clientCount} connection(s), ${t.acked} acked, ${t.pending} pending, ${t.failed} failed, ${t.pruned} stale removed`);
    for (const u of out.users ?? []) if (u.error) console.log(`  failed   ${u.userId ?? `relay ${u.relay} (${u.users} users)`}  ${u.error}: ${u.message}`);
    for (const r of out.results ?? []) console.log(`  result   ${JSON.stringify(r)}`);
    if (out.truncated) console.log("  (detail truncated to 1,000 entries; the totals are exact)");
    return;
  }
  const dup = out.duplicate ? " (duplicate: this Idempotency-Key was already published; nothing was delivered again)" : "";
  console.log(`published seq ${out.seq} (envelope ${out.envelopeId}) to ${args.user}: ${out.clientCount} connection(s) matched${dup}`);
  for (const a of out.acks ?? []) console.log(`  ack      ${a.connectionId}  ${JSON.stringify(a.result)}`);
  for (const c of out.pending ?? []) console.log(`  pending  ${c}  (no ack in time)`);
  for (const c of out.closed ?? []) console.log(`  closed   ${c}  (closed before acking)`);
  if (!out.acks && out.results) for (const r of out.results) console.log(`  result   ${JSON.stringify(r)}`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(`publish: ${e.message}`);
    if (e instanceof UsageError) console.error(USAGE);
    process.exit(e instanceof UsageError ? 2 : 1);
  });
}
