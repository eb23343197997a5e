// The client against the real built Worker: it connects with a one-time ticket from POST /tickets,
// so the token never appears in a connection URL (WebSocket and SSE), and reconnects with a new
// ticket each time (a ticket is single-use).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startWorker, publish, clientToken, publishToken, waitFor } from "../../../tests/harness.mjs";
import { SwitchboardClient } from "../dist/index.js";

let w;
before(async () => (w = await startWorker()));
after(() => w?.stop());

/** Node's WebSocket and fetch, recording every URL the client opens. */
function recording() {
  const urls = [];
  class RecordingWS extends WebSocket {
    constructor(url) {
      urls.push(new URL(url));
      super(url);
    }
  }
  const f = (url, init) => {
    urls.push(new URL(url));
    return fetch(url, init);
  };
  return { urls, RecordingWS, f };
}

for (const transport of ["websocket", "sse"]) {
  test(`${transport}: connects with a ticket; the token is in no URL; a reconnect takes a new ticket`, async () => {
    const u = `tk-${transport}-${Math.random().toString(36).slice(2, 8)}`;
    const token = clientToken(u);
    const { urls, RecordingWS, f } = recording();
    const c = new SwitchboardClient({ url: w.url, token, transport, WebSocket: RecordingWS, fetch: f, reconnect: { minDelayMs: 20, maxDelayMs: 50, jitter: 0 } });
    const got = [];
    const sub = c.subscribe({ type: "t" }, (e) => (got.push(e.payload), "ok"));
    c.connect();
    after(() => c.close()); // also when an assertion below fails
    await sub.ready;
    assert.equal(c.userId, u);
    const res = await publish(w, { userId: u, type: "t", payload: 1 });
    assert.deepEqual(res.body.results, ["ok"]);
    // Force a reconnect: the backend closes the connection (4002 reconnects).
    const first = c.connectionId;
    await fetch(`${w.url}/users/${u}/connections`, { method: "DELETE", headers: { authorization: `Bearer ${publishToken()}` } });
    await waitFor(() => c.state === "open" && c.connectionId !== first, 8000, "a reconnect");
    const connects = urls.filter((x) => !x.pathname.endsWith("/tickets") && !x.pathname.endsWith("/ack"));
    const tickets = urls.filter((x) => x.pathname.endsWith("/tickets"));
    assert.ok(connects.length >= 2 && tickets.length >= 2, JSON.stringify(urls.map(String)));
    for (const x of urls) assert.equal(x.searchParams.get("token"), null, `token in ${x}`);
    for (const x of connects) assert.ok(x.searchParams.get("ticket"), `no ticket in ${x}`);
    assert.notEqual(connects[0].searchParams.get("ticket"), connects[1].searchParams.get("ticket"));
    assert.deepEqual(got, [1]);
    c.close();
  });
}
