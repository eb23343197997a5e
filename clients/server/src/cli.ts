// The `switchboard` command: development tokens, publishing from the terminal, the connection and
// members APIs, and a local webhook receiver that verifies and prints events (as `stripe listen` does).
// Node only (it reads files and listens on a port); the library in index.ts stays runtime-neutral.
import fs from "node:fs";
import http from "node:http";
import { parseArgs, parseEnv } from "node:util";
import { Switchboard } from "./client.js";
import { SwitchboardError, WebhookVerificationError } from "./errors.js";
import { mintToken } from "./token.js";
import { isFailure } from "./types.js";
import type { ChannelPublishResult, MultiPublishResult, PublishResult, RelayFailure, UserFailure } from "./types.js";
import { verifyWebhook } from "./webhook.js";

const USAGE = `usage: switchboard <command> [options]

commands:
  token        mint a token:  --user ID (client) | --publish (backend)
               [--channels LIST] [--publish-channels LIST] [--ttl SECONDS (default 86400)]
  publish      publish and print the acks:  --user ID | --users LIST | --channel NAME
               [--type TYPE] [--payload JSON] [--connection ID] [--timeout-ms N] [--idempotency-key KEY] [--json]
  connections  list a user's connections:  switchboard connections USER [--json]
               close them:  --close (all) | --close --connection ID
  members      list a channel's members, every page:  switchboard members CHANNEL [--limit N] [--json]
  listen       receive webhooks on 127.0.0.1, verify and print them:  [--port N (default 8788)] [--json]

common options:
  --url URL        the Worker (default $SWITCHBOARD_URL or http://127.0.0.1:\${PORT:-8787})
  --secret S       JWT_SECRET (token/publish/connections/members) or WEBHOOK_SECRET (listen)
  --env-file FILE  where JWT_SECRET / WEBHOOK_SECRET / SWITCHBOARD_URL are read from (default .dev.vars);
                   the environment wins over the file
  LIST             comma-separated, e.g. 'lobby,room:*' ('*': every channel)`;

class UsageError extends Error {}

const OPTIONS = {
  url: { type: "string" },
  secret: { type: "string" },
  "env-file": { type: "string" },
  user: { type: "string" },
  users: { type: "string" },
  channel: { type: "string" },
  publish: { type: "boolean" },
  channels: { type: "string" },
  "publish-channels": { type: "string" },
  ttl: { type: "string" },
  type: { type: "string" },
  payload: { type: "string" },
  connection: { type: "string" },
  "timeout-ms": { type: "string" },
  "idempotency-key": { type: "string" },
  json: { type: "boolean" },
  close: { type: "boolean" },
  limit: { type: "string" },
  port: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

type Values = ReturnType<typeof parse>["values"];
function parse(argv: string[]) {
  try {
    return parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** Settings from the environment, then from the env file (Node's own dotenv parser). */
function settings(values: Values): Record<string, string | undefined> {
  const file = values["env-file"] ?? ".dev.vars";
  let fromFile: Record<string, string> = {};
  if (fs.existsSync(file)) fromFile = parseEnv(fs.readFileSync(file, "utf8")) as Record<string, string>;
  else if (values["env-file"] !== undefined) throw new UsageError(`--env-file ${file} does not exist`);
  // An empty variable counts as unset, so `JWT_SECRET= switchboard token` falls back to the file.
  const fromEnv = Object.fromEntries(Object.entries(process.env).filter(([, v]) => v));
  return { ...fromFile, ...fromEnv };
}

function jwtSecret(values: Values, env: Record<string, string | undefined>): string {
  const s = values.secret ?? env.JWT_SECRET;
  if (!s) throw new UsageError("no JWT_SECRET: pass --secret, set JWT_SECRET, or run `make dev` once to create .dev.vars");
  return s;
}

function list(value: string, flag: string): string[] {
  const items = value.split(",").map((s) => s.trim()).filter(Boolean);
  if (!items.length) throw new UsageError(`${flag} needs a comma-separated list, e.g. 'lobby,room:*'`);
  return items;
}

function whole(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new UsageError(`${flag} must be a whole number, got ${JSON.stringify(value)}`);
  return Number(value);
}

function client(values: Values, env: Record<string, string | undefined>): Switchboard {
  const url = values.url ?? env.SWITCHBOARD_URL ?? `http://127.0.0.1:${env.PORT || 8787}`;
  try {
    return new Switchboard({ url, secret: jwtSecret(values, env) });
  } catch (e) {
    if (e instanceof SwitchboardError && e.code === "invalid_argument") throw new UsageError(`--url: ${e.message}`);
    throw e;
  }
}

const show = (x: unknown) => JSON.stringify(x);

async function token(values: Values, env: Record<string, string | undefined>) {
  if (!values.user && !values.publish) throw new UsageError("token needs --user ID or --publish");
  const ttl = whole(values.ttl, "--ttl") ?? 86400;
  if (ttl <= 0) throw new UsageError("--ttl must be positive");
  console.log(
    await mintToken({
      secret: jwtSecret(values, env),
      userId: values.user,
      publish: values.publish,
      channels: values.channels === undefined ? undefined : list(values.channels, "--channels"),
      publishChannels: values["publish-channels"] === undefined ? undefined : list(values["publish-channels"], "--publish-channels"),
      expiresIn: ttl,
      claims: values.user && !values.publish ? { sub: values.user } : { sub: "switchboard-cli" },
    }),
  );
}

function failureLine(u: UserFailure | RelayFailure): string {
  const who = "userId" in u ? u.userId : `relay ${u.relay} (${u.users} users)`;
  return `  failed   ${who}  ${u.error}: ${u.message}`;
}

async function publish(values: Values, env: Record<string, string | undefined>) {
  const targets = (["user", "users", "channel"] as const).filter((k) => values[k] !== undefined);
  if (targets.length !== 1) throw new UsageError("publish needs exactly one of --user, --users and --channel");
  let payload: unknown;
  if (values.payload !== undefined) {
    try {
      payload = JSON.parse(values.payload);
    } catch (e) {
      throw new UsageError(`--payload is not valid JSON (${(e as Error).message}); quote it for the shell, e.g. --payload '{"text":"hi"}'`);
    }
  }
  const common = {
    type: values.type ?? "message",
    payload,
    timeoutMs: whole(values["timeout-ms"], "--timeout-ms"),
    idempotencyKey: values["idempotency-key"],
  };
  const sb = client(values, env);
  if (values.channel !== undefined) {
    const r: ChannelPublishResult = await sb.publish({ channel: values.channel, ...common });
    if (values.json) return console.log(JSON.stringify(r, null, 2));
    const t = r.totals;
    console.log(`published to ${r.channel}: ${t.users} member(s), ${t.clientCount} connection(s), ${t.acked} acked, ${t.pending} pending, ${t.failed} failed, ${t.pruned} stale removed`);
    for (const u of r.users) if (isFailure(u)) console.log(failureLine(u));
    for (const x of r.results) console.log(`  result   ${show(x)}`);
    if (r.truncated) console.log("  (detail truncated to 1,000 entries; the totals are exact)");
  } else if (values.users !== undefined) {
    const r: MultiPublishResult = await sb.publish({ userIds: list(values.users, "--users"), ...common });
    if (values.json) return console.log(JSON.stringify(r, null, 2));
    const t = r.totals;
    console.log(`published to ${t.users} user(s): ${t.clientCount} connection(s), ${t.acked} acked, ${t.pending} pending, ${t.closed} closed, ${t.failed} failed`);
    for (const u of r.users) {
      if (isFailure(u)) console.log(failureLine(u));
      else for (const a of u.acks) console.log(`  ack      ${u.userId}  ${a.connectionId}  ${show(a.result)}`);
    }
  } else {
    const r: PublishResult = await sb.publish({ userId: values.user!, connectionId: values.connection, ...common });
    if (values.json) return console.log(JSON.stringify(r, null, 2));
    const dup = r.duplicate ? " (duplicate: this Idempotency-Key was already published; nothing was delivered again)" : "";
    console.log(`published seq ${r.seq} (envelope ${r.envelopeId}) to ${values.user}: ${r.clientCount} connection(s) matched${dup}`);
    for (const a of r.acks) console.log(`  ack      ${a.connectionId}  ${show(a.result)}`);
    for (const c of r.pending) console.log(`  pending  ${c}  (no ack in time)`);
    for (const c of r.closed) console.log(`  closed   ${c}  (closed before acking)`);
  }
}

async function connections(values: Values, positionals: string[], env: Record<string, string | undefined>) {
  const user = positionals[0] ?? values.user;
  if (!user) throw new UsageError("connections needs a user: switchboard connections USER");
  const sb = client(values, env);
  if (values.close) {
    const closed = values.connection ? await sb.closeConnection(user, values.connection) : await sb.closeConnections(user);
    if (values.json) return console.log(JSON.stringify({ closed }));
    console.log(`closed ${closed.length} connection(s) of ${user} (code 4002)`);
    for (const id of closed) console.log(`  ${id}`);
    return;
  }
  const list = await sb.connections(user);
  if (values.json) return console.log(JSON.stringify({ connections: list }, null, 2));
  console.log(`${list.length} open connection(s) of ${user}`);
  for (const c of list) {
    console.log(`  ${c.connectionId}  ${c.transport}  since ${c.connectedAt}  closes ${c.closesAt ?? "never"}  filters ${show(c.filters)}`);
  }
}

async function members(values: Values, positionals: string[], env: Record<string, string | undefined>) {
  const channel = positionals[0] ?? values.channel;
  if (!channel) throw new UsageError("members needs a channel: switchboard members CHANNEL");
  const sb = client(values, env);
  const all: string[] = [];
  let count = 0;
  for await (const page of sb.members(channel, { limit: whole(values.limit, "--limit") })) {
    count = page.count;
    all.push(...page.members);
  }
  if (values.json) return console.log(JSON.stringify({ channel, count, members: all }));
  console.log(`${count} member(s) of ${channel}`);
  for (const m of all) console.log(`  ${m}`);
}

async function listen(values: Values, env: Record<string, string | undefined>) {
  const secret = values.secret ?? env.WEBHOOK_SECRET;
  if (!secret) throw new UsageError("no WEBHOOK_SECRET: pass --secret or set WEBHOOK_SECRET (environment or .dev.vars)");
  const port = whole(values.port, "--port") ?? 8788;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (d: Buffer) => chunks.push(d));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      try {
        const event = verifyWebhook(secret, body, req.headers);
        res.writeHead(204).end();
        if (values.json) console.log(JSON.stringify(event));
        else console.log(`${event.time}  ${event.type}  user ${event.subject}  ${show(event.data)}`);
      } catch (e) {
        const why = e instanceof WebhookVerificationError ? e.message : String(e);
        res.writeHead(400, { "content-type": "application/json" }).end(show({ error: "invalid_signature", message: why }));
        console.error(`refused ${req.method} ${req.url}: ${why}`);
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });
  const addr = server.address();
  const bound = typeof addr === "object" && addr ? addr.port : port;
  console.error(`listening on http://127.0.0.1:${bound}/  (set WEBHOOK_URL=http://127.0.0.1:${bound}/ and the same WEBHOOK_SECRET for the Worker; Ctrl-C stops)`);
  await new Promise<void>((resolve) => {
    const stop = () => {
      server.close(() => resolve());
      server.closeAllConnections(); // keep-alive connections would hold close() open
    };
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  });
}

export async function main(argv: string[]): Promise<number> {
  try {
    const { values, positionals } = parse(argv);
    const [command, ...rest] = positionals;
    if (values.help || !command) {
      console.log(USAGE);
      return values.help ? 0 : 2;
    }
    const env = settings(values);
    switch (command) {
      case "token": await token(values, env); break;
      case "publish": await publish(values, env); break;
      case "connections": await connections(values, rest, env); break;
      case "members": await members(values, rest, env); break;
      case "listen": await listen(values, env); break;
      default: throw new UsageError(`unknown command ${JSON.stringify(command)}`);
    }
    return 0;
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`switchboard: ${e.message}\n\n${USAGE}`);
      return 2;
    }
    const err = e as SwitchboardError;
    let hint = "";
    if (err.status === 401) hint = " (does the Worker use the same JWT_SECRET?)";
    if (err.code === "network_error") hint = " (is the Worker running? `make dev`, or pass --url)";
    console.error(`switchboard: ${err.message}${hint}`);
    return 1;
  }
}
