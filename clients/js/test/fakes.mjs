// Scripted fakes for the client's unit tests: a WebSocket the test plays the server on, and a fetch
// that serves /sse streams from a script. Shared by unit.test.mjs and presence.unit.test.mjs.
import { SwitchboardClient } from "../dist/index.js";

export const tick = () => new Promise((r) => setTimeout(r, 0));
export async function waitFor(pred, ms = 2000, what = "condition") {
  const end = Date.now() + ms;
  for (;;) {
    const v = pred();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** A scripted WebSocket: records what the client sends; the test plays the server. */
export function fakeSockets() {
  const all = [];
  class FakeWS {
    constructor(url) {
      this.url = new URL(url);
      this.readyState = 0;
      this.sent = [];
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      all.push(this);
      queueMicrotask(() => {
        if (this.readyState === 0) {
          this.readyState = 1;
          this.onopen?.({});
        }
      });
    }
    send(d) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(d);
    }
    close(code = 1000, reason = "") {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.clientClosed = code;
      queueMicrotask(() => this.onclose?.({ code, reason }));
    }
    // --- the server's side ---
    push(frame) {
      this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }
    welcome(seq = 0, connectionId = `c${all.indexOf(this)}`) {
      this.push({ type: "welcome", connectionId, userId: "u", seq });
    }
    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    frames(type) {
      return this.sent.filter((s) => s !== "ping").map((s) => JSON.parse(s)).filter((f) => !type || f.type === type);
    }
  }
  return { FakeWS, all };
}

export const env = (seq, type = "chat", payload = { room: "r1" }, extra = {}) => ({
  envelopeId: `e${seq}`,
  seq,
  type,
  userId: "u",
  timestamp: new Date().toISOString(),
  payload,
  ...extra,
});

export function setup(opts = {}) {
  const { FakeWS, all } = fakeSockets();
  let tokens = 0;
  const client = new SwitchboardClient({
    tickets: false,
    url: "http://sb.test:8787",
    token: () => `tok${++tokens}`,
    WebSocket: FakeWS,
    reconnect: { minDelayMs: 1, maxDelayMs: 5, jitter: 0 },
    pingIntervalMs: 0,
    ...opts,
  });
  const states = [];
  const errors = [];
  client.on("state", (s) => states.push(s));
  client.on("error", (e) => errors.push(e));
  return { client, all, states, errors, tokens: () => tokens, last: () => all[all.length - 1] };
}

/** Connects, answers the welcome and every subscribe with ok. */
export async function open(t, seq = 0) {
  const n = t.all.length;
  t.client.connect();
  const ws = await waitFor(() => t.all[n], 1000, "a socket");
  await waitFor(() => ws.readyState === 1);
  ws.welcome(seq);
  return ws;
}
export async function okAll(ws, type = "subscribe") {
  await tick();
  for (const f of ws.frames(type)) if (f.id !== undefined && !f._ok) ws.push({ type: "ok", id: f.id });
}

/** A fake fetch serving /sse from a script and recording /ack posts. */
export function fakeSse() {
  const streams = [];
  const acks = [];
  const f = async (url, init = {}) => {
    const u = new URL(url);
    if (u.pathname.endsWith("/ack")) {
      acks.push({ auth: init.headers.authorization, body: JSON.parse(init.body) });
      return new Response("{}", { status: 200 });
    }
    let ctrl;
    const body = new ReadableStream({ start: (c) => (ctrl = c) });
    const enc = new TextEncoder();
    const s = {
      url: u,
      headers: init.headers,
      write: (text) => ctrl.enqueue(enc.encode(text)),
      end: () => ctrl.close(),
      aborted: false,
    };
    init.signal?.addEventListener("abort", () => {
      s.aborted = true;
      try {
        ctrl.error(new DOMException("aborted", "AbortError"));
      } catch {}
    });
    streams.push(s);
    return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
  };
  return { f, streams, acks };
}

