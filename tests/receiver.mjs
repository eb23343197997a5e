// A webhook receiver on 127.0.0.1 for the hardening tests: it verifies every request the way a
// backend would (Standard Webhooks signature, freshness, content type), understands both a single
// structured CloudEvent and a CloudEvents JSON batch, and lets a test decide each answer.
import http from "node:http";
import crypto from "node:crypto";

export const SECRET_BYTES = crypto.randomBytes(24);
export const WEBHOOK_SECRET = `whsec_${SECRET_BYTES.toString("base64")}`;

export class Receiver {
  /** Verified events, in arrival order: `{ webhookId, event, batch }`. */
  events = [];
  /** Every verified request: `{ webhookId, events, status, body, headers }` (the raw body and headers, for SDK checks). */
  requests = [];
  bad = [];
  /** `(events, request) => status` for verified requests; 204 when it returns nothing. */
  answer = () => 204;
  /** Milliseconds to wait before answering (a slow backend). */
  delayMs = 0;
  #waiters = [];

  async start(port = 0) {
    this.server = http.createServer((req, res) => {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", async () => {
        const id = req.headers["webhook-id"];
        const ts = req.headers["webhook-timestamp"];
        const sig = req.headers["webhook-signature"];
        const type = req.headers["content-type"] || "";
        const expected = crypto.createHmac("sha256", SECRET_BYTES).update(`${id}.${ts}.${body}`).digest("base64");
        const fresh = Math.abs(Date.now() / 1000 - Number(ts)) < 300;
        const valid = typeof sig === "string" && sig.split(" ").some((s) => s === `v1,${expected}`);
        const batch = type.startsWith("application/cloudevents-batch+json");
        if (!valid || !fresh || !(batch || type.startsWith("application/cloudevents+json"))) {
          this.bad.push({ id, ts, sig, body, type });
          res.writeHead(401).end();
          return;
        }
        const parsed = JSON.parse(body);
        const events = batch ? parsed : [parsed];
        if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
        const status = this.answer(events, { webhookId: id, batch }) ?? 204;
        this.requests.push({ webhookId: id, events, status, body, headers: req.headers });
        if (status >= 200 && status < 300) {
          for (const event of events) this.events.push({ webhookId: id, event, batch });
        }
        res.writeHead(status).end();
        this.#waiters.splice(0).forEach((w) => w());
      });
    });
    await new Promise((r) => this.server.listen(port, "127.0.0.1", r));
    this.port = this.server.address().port;
    this.url = `http://127.0.0.1:${this.port}/hooks`;
    return this;
  }

  async stop() {
    await new Promise((r) => {
      this.server.close(r);
      this.server.closeAllConnections?.();
    });
  }

  /** Accepted events of one user, in arrival order. */
  of(userId) {
    return this.events.filter((e) => e.event.subject === userId).map((e) => e.event);
  }

  async until(pred, ms = 15000, what = "") {
    const end = Date.now() + ms;
    while (!pred(this)) {
      if (Date.now() > end) {
        throw new Error(`receiver: timed out ${what}; got ${JSON.stringify(this.events.map((e) => [e.event.type.split(".")[2], e.event.data?.data]))}`);
      }
      await new Promise((r) => (this.#waiters.push(r), setTimeout(r, 100)));
    }
  }
}

/** The event's type without the `switchboard.` prefix and the version: `connection.opened`. */
export const kind = (e) => e.type.split(".").slice(1, 3).join(".");
