// The benchmark's floor: the least JavaScript that speaks Switchboard's wire contract as far as the
// benchmark uses it. A plain module Worker + one SQLite-backed Durable Object per user, using the
// WebSocket Hibernation API. No build step, no dependencies, no extras (no CORS, no rate limit,
// no replay, no webhook, no size limits beyond the runtime's).
//
// What it does, like Switchboard:
// - HS256 tokens (Web Crypto): clients `{userId, exp}`, publishers `{scope: "publish", exp}`.
// - `GET /?token=` with `Upgrade: websocket` -> the user's hub; first frame `welcome`.
// - `subscribe` with exact-match filters (in memory + in the socket's attachment), replied `ok`.
// - `POST /publish` -> the user's hub: `seq` stored in SQLite before the envelope leaves, envelope
//   serialized once and sent to each matching socket, acks collected until all are in or the
//   timeout passes, same response shape. One JSON log line per publish and per connect (Switchboard
//   logs those too; see BENCHMARKS.md).
// - `ping` -> `pong` answered by the runtime (auto-response), as Switchboard does.

const enc = new TextEncoder();
const dec = new TextDecoder();
let keyPromise;
let keySecret;

function b64urlDecode(s) {
  s = s.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(s + "===".slice((s.length + 3) % 4));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function verify(token, secret) {
  if (!token) return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  if (keySecret !== secret) {
    keySecret = secret;
    keyPromise = crypto.subtle.importKey("raw", enc.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
  }
  let header, claims, sig;
  try {
    header = JSON.parse(dec.decode(b64urlDecode(parts[0])));
    claims = JSON.parse(dec.decode(b64urlDecode(parts[1])));
    sig = b64urlDecode(parts[2]);
  } catch {
    return null;
  }
  if (!header || header.alg !== "HS256") return null;
  const ok = await crypto.subtle.verify("HMAC", await keyPromise, sig, enc.encode(parts[0] + "." + parts[1]));
  if (!ok || !claims || typeof claims !== "object") return null;
  if (typeof claims.exp === "number" && claims.exp * 1000 <= Date.now()) return null;
  return claims;
}

const json = (status, body) =>
  new Response(typeof body === "string" ? body : JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8" },
  });
const err = (status, error, message) => json(status, { error, message });

export default {
  async fetch(req, env) {
    const url = new URL(req.url);
    if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
      const claims = await verify(url.searchParams.get("token"), env.JWT_SECRET);
      if (!claims) return err(401, "invalid_token", "bad token");
      if (typeof claims.userId !== "string" || !claims.userId) return err(401, "invalid_token", "no userId");
      const hop = new URL("https://hub/connect");
      hop.searchParams.set("user", claims.userId);
      const stub = env.USER_HUB.get(env.USER_HUB.idFromName(claims.userId));
      return stub.fetch(hop, { headers: { upgrade: "websocket" } });
    }
    if (url.pathname === "/publish" && req.method === "POST") {
      const auth = req.headers.get("authorization") || "";
      const claims = await verify(auth.startsWith("Bearer ") ? auth.slice(7) : null, env.JWT_SECRET);
      if (!claims) return err(401, "invalid_token", "bad token");
      if (!String(claims.scope || "").split(" ").includes("publish")) return err(403, "forbidden", "no publish scope");
      const body = await req.text();
      let p;
      try {
        p = JSON.parse(body);
      } catch {
        return err(400, "invalid_json", "bad json");
      }
      if (!p || typeof p.userId !== "string" || !p.userId) return err(400, "invalid_user_id", "userId");
      const stub = env.USER_HUB.get(env.USER_HUB.idFromName(p.userId));
      return stub.fetch("https://hub/publish", { method: "POST", headers: { "content-type": "application/json" }, body });
    }
    if (url.pathname === "/healthz") return json(200, '{"status":"ok"}');
    return err(404, "not_found", "no route");
  },
};

const matches = (filters, type, payload) => {
  for (const f of filters) {
    if (f.type !== type) continue;
    let ok = true;
    for (const k in f) {
      if (k === "type") continue;
      if (payload === null || typeof payload !== "object" || payload[k] !== f[k]) {
        ok = false;
        break;
      }
    }
    if (ok) return true;
  }
  return false;
};

export class UserHub {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
    this.conns = new Map(); // ws -> { id, userId, filters }
    this.waiting = new Map(); // envelopeId -> { expected: Map(connId -> state), acks: [], resolve }
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair("ping", "pong"));
    ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)");
    const row = ctx.storage.sql.exec("SELECT value FROM meta WHERE key = 'seq'").toArray()[0];
    this.seq = row ? Number(row.value) : 0;
    for (const ws of ctx.getWebSockets()) {
      const a = ws.deserializeAttachment();
      if (a) this.conns.set(ws, a);
    }
  }

  async fetch(req) {
    const url = new URL(req.url);
    if (url.pathname === "/connect") {
      const userId = url.searchParams.get("user");
      const [client, server] = Object.values(new WebSocketPair());
      const conn = { id: crypto.randomUUID(), userId, filters: [] };
      this.ctx.acceptWebSocket(server);
      server.serializeAttachment(conn);
      this.conns.set(server, conn);
      server.send(JSON.stringify({ type: "welcome", connectionId: conn.id, userId, seq: this.seq }));
      console.log(JSON.stringify({ event: "connect", userId, connectionId: conn.id, open: this.conns.size }));
      return new Response(null, { status: 101, webSocket: client });
    }
    if (url.pathname === "/publish") return this.publish(await req.text());
    return err(404, "not_found", "no route");
  }

  async publish(body) {
    const p = JSON.parse(body);
    const type = typeof p.type === "string" ? p.type : "message";
    const payload = p.payload === undefined ? null : p.payload;
    const started = Date.now();
    const seq = ++this.seq;
    this.ctx.storage.sql.exec(
      "INSERT INTO meta (key, value) VALUES ('seq', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
      seq,
    );
    const envelopeId = crypto.randomUUID();
    const text = JSON.stringify({
      envelopeId,
      seq,
      type,
      userId: p.userId,
      timestamp: new Date(started).toISOString(),
      payload,
    });
    const expected = new Map();
    for (const [ws, conn] of this.conns) {
      if (!matches(conn.filters, type, payload)) continue;
      try {
        ws.send(text);
        expected.set(conn.id, "waiting");
      } catch {
        // closing socket: not counted
      }
    }
    const entry = { expected, left: expected.size, acks: [], resolve: null };
    const timeoutMs = Math.min(typeof p.timeoutMs === "number" ? p.timeoutMs : 5000, 30000);
    if (entry.left > 0 && timeoutMs > 0) {
      this.waiting.set(envelopeId, entry);
      let timer;
      await new Promise((resolve) => {
        entry.resolve = resolve;
        timer = setTimeout(resolve, timeoutMs);
      });
      clearTimeout(timer);
      this.waiting.delete(envelopeId);
    }
    const pending = [];
    const closed = [];
    for (const [id, s] of expected) {
      if (s === "waiting") pending.push(id);
      else if (s === "closed") closed.push(id);
    }
    console.log(
      JSON.stringify({
        event: "publish", userId: p.userId, envelopeId, seq, type, clientCount: expected.size,
        acked: entry.acks.length, pending: pending.length, closed: closed.length, ms: Date.now() - started,
      }),
    );
    return json(200, {
      envelopeId,
      seq,
      clientCount: expected.size,
      results: entry.acks.map((a) => a.result),
      acks: entry.acks,
      pending,
      closed,
    });
  }

  webSocketMessage(ws, message) {
    let conn = this.conns.get(ws);
    if (!conn) {
      conn = ws.deserializeAttachment();
      if (!conn) return;
      this.conns.set(ws, conn);
    }
    if (typeof message !== "string") return;
    let f;
    try {
      f = JSON.parse(message);
    } catch {
      ws.send(JSON.stringify({ type: "error", code: "invalid_json", message: "bad json" }));
      return;
    }
    if (f.type === "ack") {
      const entry = this.waiting.get(f.envelopeId);
      if (entry && entry.expected.get(conn.id) === "waiting") {
        entry.expected.set(conn.id, "acked");
        entry.acks.push({ connectionId: conn.id, result: f.result === undefined ? null : f.result });
        if (--entry.left === 0) entry.resolve();
      }
      return;
    }
    if (f.type === "subscribe" && Array.isArray(f.filters)) {
      for (const filter of f.filters) {
        if (!filter || typeof filter !== "object" || typeof filter.type !== "string" || !filter.type) continue;
        if (!Object.values(filter).every((v) => typeof v === "string")) continue;
        conn.filters.push(filter);
      }
      ws.serializeAttachment(conn);
      if (f.id !== undefined) ws.send(JSON.stringify({ type: "ok", id: f.id }));
      return;
    }
    ws.send(JSON.stringify({ type: "error", code: "unknown_type", message: "unsupported frame", id: f.id }));
  }

  webSocketClose(ws, code, reason) {
    this.forget(ws);
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, reason);
    } catch {}
  }

  webSocketError(ws) {
    this.forget(ws);
  }

  forget(ws) {
    const conn = this.conns.get(ws);
    if (!conn) return;
    this.conns.delete(ws);
    for (const entry of this.waiting.values()) {
      if (entry.expected.get(conn.id) === "waiting") {
        entry.expected.set(conn.id, "closed");
        if (--entry.left === 0) entry.resolve();
      }
    }
  }
}
