// The demo page: one Switchboard client per tab, subscribed to a chat room of the tab's user.
// Each message's handler returns the ack result (which tab got it), and the publish response, with
// every tab's ack, is shown to whoever published. ?user=alice&transport=sse&room=lobby
// The tab also joins the channel `room:<room>` with presence, so it shows who is in the room, and it
// survives a reload: the client keeps its resume point in sessionStorage (`resume: "session"`), and the
// page keeps the messages it showed there too, so what was published during the reload is replayed.
import { SwitchboardClient } from "/sdk/index.js";

const params = new URLSearchParams(location.search);
const user = params.get("user") || "alice";
const transport = params.get("transport") === "sse" ? "sse" : "websocket";
const room = params.get("room") || "lobby";
const tab = Math.random().toString(36).slice(2, 6);
const $ = (id) => document.getElementById(id);
function el(tag, { dataset, ...props } = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, dataset);
  node.append(...children);
  return node;
}

$("user").textContent = user;
$("tab").textContent = tab;
$("transport").textContent = transport;
$("subroom").textContent = room;
$("to").value = user;
$("room").value = room;
const link = (u, t) => `?user=${encodeURIComponent(u)}${t === "sse" ? "&transport=sse" : ""}`;
$("same").href = link(user, transport === "sse" ? "websocket" : "sse");
$("other").href = link(user === "bob" ? "alice" : "bob", "websocket");
document.title = `${user} (${tab}) · Switchboard demo`;

// What this tab showed before a reload (sessionStorage is per tab and survives reloads).
const LOG_KEY = `demo:received:${user}:${room}`;
const kept = JSON.parse(sessionStorage.getItem(LOG_KEY) || "[]");
const state = { tab, user, transport, received: kept, results: [], events: [], presence: [], presenceEvents: [], loads: 0 };
window.demo = state;
state.loads = Number(sessionStorage.getItem("demo:loads") || 0) + 1;
sessionStorage.setItem("demo:loads", String(state.loads));

function event(text) {
  state.events.push(text);
  $("events").prepend(el("li", { textContent: `${new Date().toLocaleTimeString()} ${text}` }));
}

const { workerUrl } = await (await fetch("/api/config")).json();
const client = new SwitchboardClient({
  url: workerUrl,
  transport,
  // Called before every connection attempt, so a reconnect always has a fresh token.
  token: async () => {
    const res = await fetch("/api/token", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ userId: user }) });
    if (!res.ok) throw new Error(`token endpoint answered ${res.status}`);
    return (await res.json()).token;
  },
  reconnect: { minDelayMs: 250, maxDelayMs: 4000 },
  // Keep the resume point in sessionStorage: a reload of this tab resumes where it stopped.
  resume: "session",
});
state.client = client;

client.on("state", (s) => {
  const badge = $("state");
  badge.textContent = s;
  badge.dataset.state = s;
  event(`state: ${s}`);
});
client.on("welcome", (w) => {
  $("connection").textContent = w.connectionId.slice(0, 8);
  $("seq").textContent = String(client.lastSeq ?? w.seq);
  event(`welcome: connection ${w.connectionId.slice(0, 8)}, user's seq ${w.seq}`);
  if (client.lastSeq < w.seq) event(`resuming after seq ${client.lastSeq}: ${w.seq - client.lastSeq} envelope(s) of this user were published meanwhile`);
});
client.on("close", (c) => event(`closed ${c.code}${c.reason ? ` (${c.reason})` : ""}${c.reconnect ? ", reconnecting" : ""}`));
client.on("gap", (g) => event(`gap: envelopes ${g.from}..${g.to} are no longer in history`));
client.on("error", (e) => event(`error ${e.code}: ${e.message}`));

function showReceived(m) {
  const earlier = m.load < state.loads;
  $("received").append(
    el(
      "li",
      { dataset: { seq: m.seq }, className: earlier ? "earlier" : "" },
      `#${m.seq} `,
      el("b", { textContent: m.text }),
      ` from ${m.from}`,
      m.replayed ? el("span", { className: "replayed", textContent: " (replayed: published while this tab was away)" }) : "",
      earlier ? el("span", { className: "hint", textContent: ` (shown by page load ${m.load} of this tab)` }) : el("span", { className: "ack", textContent: ` → acked as tab ${tab}` }),
    ),
  );
}
state.received.forEach(showReceived);

client.subscribe({ type: "chat", room }, (envelope) => {
  const { text, from } = envelope.payload;
  const result = { tab, transport, receivedAt: new Date().toISOString() };
  const m = { seq: envelope.seq, text, from, replayed: !!envelope.replayed, load: state.loads };
  state.received.push(m);
  // Saved before the handler returns: the client moves its kept resume point only after that, so a
  // reload never skips a message this log does not have.
  sessionStorage.setItem(LOG_KEY, JSON.stringify(state.received));
  $("seq").textContent = String(client.lastSeq);
  showReceived(m);
  return result; // the ack result: the publisher sees it in the response
});

// Who is in the room: the users (not tabs) that joined the channel `room:<room>`, with the `presence`
// data of their token. SSE connections cannot join channels.
const channel = `room:${room}`;
$("channel").textContent = channel;
function showPresence(p) {
  state.presence = [...p.members.keys()].sort();
  $("count").textContent = String(p.count);
  $("members").replaceChildren(
    ...[...p.members].sort(([a], [b]) => (a < b ? -1 : 1)).map(([userId, data]) => el("li", { dataset: { user: userId }, textContent: `${data?.name ?? userId}${userId === user ? " (you)" : ""}` })),
  );
  $("presence-state").textContent = p.synced ? "" : " (reconnecting: as last seen)";
}
if (transport === "websocket") {
  const presence = client.presence(channel);
  state.presenceHandle = presence;
  presence.on("change", () => showPresence(presence));
  presence.on("join", (m) => (state.presenceEvents.push(`+${m.userId}`), event(`presence: ${m.userId} joined ${channel}`)));
  presence.on("leave", (m) => (state.presenceEvents.push(`-${m.userId}`), event(`presence: ${m.userId} left ${channel}`)));
  presence.on("error", (e) => ($("presence-state").textContent = ` (unavailable: ${e.code})`));
  client.on("state", () => showPresence(presence));
} else $("presence-state").textContent = " (needs a WebSocket: this tab uses SSE)";
client.connect();

$("publish").addEventListener("submit", async (e) => {
  e.preventDefault();
  const to = $("to").value.trim();
  const text = $("text").value;
  const body = { userId: to, type: "chat", payload: { room: $("room").value.trim(), text, from: `${user}/${tab}` }, timeoutMs: 3000 };
  $("send").disabled = true;
  try {
    const res = await fetch("/api/publish", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const out = await res.json();
    state.results.push({ status: res.status, ...out });
    const li = el("li", { dataset: { seq: out.seq ?? "" } });
    if (res.ok) {
      li.append(`"${text}" to ${to}: seq ${out.seq}, matched ${out.clientCount} connection(s)`);
      const acks = el("ul");
      for (const a of out.acks) acks.append(el("li", { className: "ack", textContent: `ack from tab ${a.result?.tab ?? "?"} (${a.result?.transport ?? "?"}, connection ${a.connectionId.slice(0, 8)})` }));
      for (const p of out.pending) acks.append(el("li", { className: "pending", textContent: `no ack in time from connection ${p.slice(0, 8)}` }));
      for (const c of out.closed ?? []) acks.append(el("li", { className: "pending", textContent: `connection ${c.slice(0, 8)} closed before acking` }));
      li.append(acks);
    } else li.append(el("span", { className: "pending", textContent: `${res.status} ${out.error}: ${out.message}` }));
    li.append(el("pre", { textContent: JSON.stringify(out) }));
    $("results").prepend(li);
    $("text").value = "";
  } catch (err) {
    $("results").prepend(el("li", { className: "pending", textContent: `publish failed: ${err.message}` }));
  } finally {
    $("send").disabled = false;
  }
});

$("reload").addEventListener("click", () => location.reload());

$("restart").addEventListener("click", async () => {
  event("asking the demo server to restart the worker");
  const res = await fetch("/api/restart-worker", { method: "POST" });
  event(res.ok ? "worker restarted" : `restart failed: ${res.status}`);
});
