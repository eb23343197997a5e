// The library (not the CLI) runs in the Workers runtime itself: it is bundled with esbuild for workerd
// (jose's WebCrypto build, the standardwebhooks package) into a small backend Worker, which Miniflare
// runs next to the Switchboard Worker. That backend mints a client token, publishes over real HTTP and
// reads the ack, and verifies a webhook signed like the outbox signs it. Nothing Node-only may be in it.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { Miniflare } from "miniflare";
import { startWorker, Client, SECRET } from "../../../tests/harness.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const WEBHOOK_SECRET = `whsec_${crypto.randomBytes(24).toString("base64")}`;

const ENTRY = `
import { Switchboard, mintToken, verifyWebhook, SwitchboardError } from "./dist/index.js";
export default {
  async fetch(request, env) {
    const { op, args } = await request.json();
    try {
      if (op === "mint") return Response.json(await mintToken({ secret: env.JWT_SECRET, ...args }));
      if (op === "publish") return Response.json(await new Switchboard({ url: env.SB_URL, secret: env.JWT_SECRET }).publish(args));
      if (op === "verify") return Response.json(verifyWebhook(env.WEBHOOK_SECRET, args.body, new Headers(args.headers)));
    } catch (e) {
      return Response.json({ name: e.name, code: e.code, message: e.message }, { status: 400 });
    }
    return new Response("unknown op", { status: 404 });
  },
};`;

let w;
let backend;
let backendUrl;
before(async () => {
  w = await startWorker();
  const out = await build({
    stdin: { contents: ENTRY, resolveDir: path.resolve(here, ".."), sourcefile: "backend.js" },
    bundle: true,
    format: "esm",
    platform: "neutral",
    conditions: ["workerd", "worker", "browser"],
    mainFields: ["browser", "module", "main"],
    write: false,
    logLevel: "silent",
  });
  backend = new Miniflare({
    name: "backend",
    modules: true,
    script: out.outputFiles[0].text,
    compatibilityDate: "2026-08-01",
    bindings: { JWT_SECRET: SECRET, SB_URL: w.url, WEBHOOK_SECRET },
    host: "127.0.0.1",
    port: 0,
  });
  backendUrl = (await backend.ready).toString().replace(/\/$/, "");
});
after(async () => {
  await backend?.dispose();
  await w?.stop();
});

const call = async (op, args) => {
  const res = await fetch(backendUrl, { method: "POST", body: JSON.stringify({ op, args }) });
  return { status: res.status, body: await res.json() };
};

test("in workerd: mintToken, publish with an ack over real HTTP, typed errors", async () => {
  const u = `workerd-${Math.random().toString(36).slice(2)}`;
  const token = await call("mint", { userId: u, expiresIn: 60 });
  assert.equal(token.status, 200);
  const c = await Client.connect(w, token.body, { autoAck: () => "from workerd" });
  await c.subscribe([{ type: "t" }]);
  const r = await call("publish", { userId: u, type: "t", payload: { n: 1 } });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.deepEqual(r.body.results, ["from workerd"]);
  const bad = await call("publish", { userId: u, type: "" });
  assert.deepEqual([bad.body.name, bad.body.code], ["SwitchboardError", "invalid_type"]);
  await c.close();
});

test("in workerd: verifyWebhook accepts a correctly signed event and refuses a tampered one", async () => {
  const body = JSON.stringify({ specversion: "1.0", id: "evt_1", source: "/switchboard", type: "switchboard.client.message.v1", subject: "a", time: new Date().toISOString(), datacontenttype: "application/json", data: { connectionId: "c", data: 1 } });
  const ts = String(Math.floor(Date.now() / 1000));
  const key = Buffer.from(WEBHOOK_SECRET.slice(6), "base64");
  const sig = `v1,${crypto.createHmac("sha256", key).update(`evt_1.${ts}.${body}`).digest("base64")}`;
  const headers = { "webhook-id": "evt_1", "webhook-timestamp": ts, "webhook-signature": sig };
  const ok = await call("verify", { body, headers });
  assert.deepEqual([ok.status, ok.body.type], [200, "switchboard.client.message.v1"]);
  const forged = await call("verify", { body: body.replace('"data":1', '"data":2'), headers });
  assert.deepEqual([forged.status, forged.body.name], [400, "WebhookVerificationError"]);
});
