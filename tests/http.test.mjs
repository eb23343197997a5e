// HTTP surface: routes, auth, publish validation, size limits, CORS and settings errors — against the
// built Worker in workerd.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startWorker, publish, mint, now, clientToken, publishToken, SECRET } from "./harness.mjs";

let w;
before(async () => (w = await startWorker()));
after(() => w.stop());

async function call(path, init = {}, worker = w) {
  const res = await fetch(`${worker.url}${path}`, init);
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  return { status: res.status, body, text, headers: res.headers };
}

function assertError(res, status, code) {
  assert.equal(res.status, status, res.text);
  assert.equal(res.body?.error, code, res.text);
  assert.equal(typeof res.body.message, "string");
  assert.ok(res.body.message.length > 0);
  assert.match(res.headers.get("content-type"), /^application\/json/);
}

test("healthz, 426 on / without upgrade, 404 and 405 are JSON", async () => {
  const h = await call("/healthz");
  assert.equal(h.status, 200);
  assert.deepEqual(h.body, { status: "ok" });
  const head = await call("/healthz", { method: "HEAD" });
  assert.deepEqual([head.status, head.text], [200, ""], "HEAD /healthz: 200, no body");
  assertError(await call("/"), 426, "upgrade_required");
  assertError(await call("/nope"), 404, "not_found");
  const m = await call("/publish", { method: "PUT" });
  assertError(m, 405, "method_not_allowed");
  assert.equal(m.headers.get("allow"), "POST, OPTIONS");
  assertError(await call("/publish"), 405, "method_not_allowed");
  assertError(await call("/healthz", { method: "POST" }), 405, "method_not_allowed");
});

test("OPTIONS answers the CORS preflight; JSON responses carry the origin header", async () => {
  const p = await call("/publish", { method: "OPTIONS", headers: { origin: "https://app.example", "access-control-request-method": "POST" } });
  assert.equal(p.status, 204);
  assert.equal(p.headers.get("access-control-allow-origin"), "*");
  assert.match(p.headers.get("access-control-allow-methods"), /POST/);
  assert.match(p.headers.get("access-control-allow-headers"), /Authorization/i);
  assert.match(p.headers.get("access-control-allow-headers"), /Content-Type/i);
  // README (CORS): methods GET, POST, DELETE, OPTIONS; Idempotency-Key allowed; cached for a day.
  assert.deepEqual(p.headers.get("access-control-allow-methods").split(/,\s*/).sort(), ["DELETE", "GET", "OPTIONS", "POST"]);
  assert.match(p.headers.get("access-control-allow-headers"), /(^|,\s*)Idempotency-Key(\s*,|$)/i);
  assert.equal(p.headers.get("access-control-max-age"), "86400");
  const r = await publish(w, { userId: "cors-u", type: "t" });
  assert.equal(r.headers.get("access-control-allow-origin"), "*");
  const e = await call("/nope");
  assert.equal(e.headers.get("access-control-allow-origin"), "*");
});

test("CORS_ORIGINS restricts which origins are allowed", async () => {
  const w2 = await startWorker({ CORS_ORIGINS: "https://app.example, http://localhost:5173" });
  try {
    const ok = await publish(w2, { userId: "u", type: "t" }, { headers: { origin: "https://app.example" } });
    assert.equal(ok.headers.get("access-control-allow-origin"), "https://app.example");
    assert.equal(ok.headers.get("vary"), "Origin");
    const no = await publish(w2, { userId: "u", type: "t" }, { headers: { origin: "https://evil.example" } });
    assert.equal(no.status, 200);
    assert.equal(no.headers.get("access-control-allow-origin"), null);
    const pre = await call("/publish", { method: "OPTIONS", headers: { origin: "http://localhost:5173" } }, w2);
    assert.equal(pre.headers.get("access-control-allow-origin"), "http://localhost:5173");
  } finally {
    await w2.stop();
  }
});

test("publish refuses missing, malformed, forged, expired and immature tokens with 401", async () => {
  const body = { userId: "u", type: "t" };
  const noAuth = await call("/publish", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  assertError(noAuth, 401, "missing_token");
  const cases = [
    ["not-a-jwt", "invalid_token"],
    ["a.b.c", "invalid_token"],
    [mint({ scope: "publish" }, { secret: "wrong-secret" }), "invalid_token"],
    [mint({ scope: "publish" }, { header: { alg: "none", typ: "JWT" } }).replace(/[^.]+$/, ""), "invalid_token"],
    [mint({ scope: "publish" }, { header: { alg: "HS512", typ: "JWT" } }), "invalid_token"],
    [mint({ scope: "publish" }, { header: { alg: "RS256", typ: "JWT" } }), "invalid_token"],
    [mint({ scope: "publish", exp: now() - 3600 }), "token_expired"],
    [mint({ scope: "publish", nbf: now() + 3600 }), "token_not_yet_valid"],
    [mint({ scope: "publish", exp: "tomorrow" }), "invalid_token"],
    [mint({ scope: "publish", iat: "now" }), "invalid_token"],
    [mint({ scope: "publish", exp: 1e300 }), "invalid_token"],
    // Signed claims that are not an object: an array is not read field by field.
    [mint([now() + 3600, now() - 10, now() - 10, "u", "publish"]), "invalid_token"],
    [mint({ scope: "publish" }, { header: { alg: "HS256", cty: "cbor" } }), "invalid_token"],
    // A signed header that is not an object: `alg` is not read from an array's first element.
    [mint({ scope: "publish", exp: now() + 3600 }, { header: ["HS256"] }), "invalid_token"],
    [`${mint({ scope: "publish" })}.x`, "invalid_token"],
    ["x".repeat(20000), "invalid_token"],
  ];
  for (const [token, code] of cases) {
    assertError(await publish(w, body, { token }), 401, code);
  }
  // What a JWT library may legitimately send: fields in any order, `cty: "JSON"`, a fractional `exp`.
  const unusual = mint({ exp: now() + 3600.5, scope: "publish" }, { header: { typ: "JWT", cty: "JSON", alg: "HS256" } });
  assert.equal((await publish(w, body, { token: unusual })).status, 200);
  // A tampered payload with the original signature.
  const good = publishToken();
  const [h, , s] = good.split(".");
  const forged = `${h}.${Buffer.from(JSON.stringify({ scope: "publish admin" })).toString("base64url")}.${s}`;
  assertError(await publish(w, body, { token: forged }), 401, "invalid_token");
});

test("publish needs the publish scope (403), unless PUBLISH_AUTH=any-token", async () => {
  assertError(await publish(w, { userId: "u" }, { token: clientToken("u") }), 403, "forbidden");
  assertError(await publish(w, { userId: "u" }, { token: mint({ scope: "publisher read" }) }), 403, "forbidden");
  assert.equal((await publish(w, { userId: "u" }, { token: mint({ scope: "read publish" }) })).status, 200);
  const w2 = await startWorker({ PUBLISH_AUTH: "any-token" });
  try {
    const r = await publish(w2, { userId: "someone-else" }, { token: clientToken("u") });
    assert.equal(r.status, 200, r.text);
  } finally {
    await w2.stop();
  }
});

test("the token may come from ?token= for publish too", async () => {
  const r = await call(`/publish?token=${publishToken()}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ userId: "u" }),
  });
  assert.equal(r.status, 200, r.text);
});

test("JWT_SECRET_PREVIOUS keeps tokens signed with the old secret valid during rotation", async () => {
  const w2 = await startWorker({ JWT_SECRET: "brand-new-secret-that-is-32-bytes-long", JWT_SECRET_PREVIOUS: SECRET });
  try {
    assert.equal((await publish(w2, { userId: "u" }, { token: publishToken() })).status, 200);
    assert.equal((await publish(w2, { userId: "u" }, { token: mint({ scope: "publish" }, { secret: "brand-new-secret-that-is-32-bytes-long" }) })).status, 200);
    assertError(await publish(w2, { userId: "u" }, { token: mint({ scope: "publish" }, { secret: "other" }) }), 401, "invalid_token");
  } finally {
    await w2.stop();
  }
});

test("publish bodies must be JSON (415) and well-formed (400)", async () => {
  for (const ct of ["text/plain", "application/x-www-form-urlencoded", ""]) {
    const headers = ct ? { "content-type": ct } : { "content-type": "" };
    assertError(await publish(w, JSON.stringify({ userId: "u" }), { headers }), 415, "unsupported_media_type");
  }
  assert.equal((await publish(w, { userId: "u" }, { headers: { "content-type": "application/json; charset=utf-8" } })).status, 200);
  // application/*+json is JSON too (README: 415 row).
  for (const ct of ["application/cloudevents+json", "application/vnd.api+json; charset=utf-8"]) {
    const r = await publish(w, { userId: "u" }, { headers: { "content-type": ct } });
    assert.equal(r.status, 200, `${ct}: ${r.text}`);
  }
  const cases = [
    ["", "invalid_json"],
    ["{", "invalid_json"],
    ["nul", "invalid_json"],
    ["[]", "invalid_body"],
    ['"u"', "invalid_body"],
    ["null", "invalid_body"],
    ["{}", "invalid_user_id"],
    ['{"userId":""}', "invalid_user_id"],
    ['{"userId":"   "}', "invalid_user_id"],
    ['{"userId":5}', "invalid_user_id"],
    [JSON.stringify({ userId: "x".repeat(300) }), "invalid_user_id"],
    ['{"userId":"u","type":5}', "invalid_type"],
    ['{"userId":"u","type":""}', "invalid_type"],
    ['{"userId":"u","timeoutMs":-1}', "invalid_timeout"],
    ['{"userId":"u","timeoutMs":"5"}', "invalid_timeout"],
    ['{"userId":"u","connectionId":1}', "invalid_connection_id"],
    ['{"userId":"u","userId":"v"}', "invalid_body"],
  ];
  for (const [body, code] of cases) {
    assertError(await publish(w, body), 400, code);
  }
  // Bytes that are not UTF-8, alone and inside a string of an object that is otherwise valid.
  for (const bytes of [[0xff, 0xfe], [...Buffer.from('{"userId":"u'), 0xc3, 0x28, ...Buffer.from('"}')]]) {
    assertError(await publish(w, Uint8Array.from(bytes)), 400, "invalid_json");
  }
});

test("bodies over MAX_PUBLISH_BYTES are refused with 413, with or without Content-Length", async () => {
  const w2 = await startWorker({ MAX_PUBLISH_BYTES: "2048" });
  try {
    const big = JSON.stringify({ userId: "u", payload: "x".repeat(4000) });
    assertError(await publish(w2, big), 413, "payload_too_large");
    const chunks = [new TextEncoder().encode(big.slice(0, 1500)), new TextEncoder().encode(big.slice(1500))];
    const stream = new ReadableStream({
      pull(c) {
        const next = chunks.shift();
        if (next) c.enqueue(next);
        else c.close();
      },
    });
    const res = await fetch(`${w2.url}/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${publishToken()}`, "content-type": "application/json" },
      body: stream,
      duplex: "half",
    });
    assert.equal(res.status, 413);
    assert.equal((await res.json()).error, "payload_too_large");
    assert.equal((await publish(w2, { userId: "u", payload: "x".repeat(1000) })).status, 200);
  } finally {
    await w2.stop();
  }
  // Default limit is 1 MiB.
  assertError(await publish(w, JSON.stringify({ userId: "u", payload: "x".repeat(1024 * 1024 + 10) })), 413, "payload_too_large");
});

test("a missing JWT_SECRET or a bad setting answers 500 server_misconfigured naming it", async () => {
  const w2 = await startWorker({ JWT_SECRET: undefined });
  try {
    const r = await call("/healthz", {}, w2);
    assertError(r, 500, "server_misconfigured");
    assert.match(r.body.message, /JWT_SECRET/);
  } finally {
    await w2.stop();
  }
  const w3 = await startWorker({ ACK_TIMEOUT_MS: "five seconds" });
  try {
    const r = await publish(w3, { userId: "u" });
    assertError(r, 500, "server_misconfigured");
    assert.match(r.body.message, /ACK_TIMEOUT_MS/);
  } finally {
    await w3.stop();
  }
});

test("a huge query string does not crash the Worker", async () => {
  const r = await fetch(`${w.url}/publish?token=${"x".repeat(60000)}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: "{}",
  });
  assert.ok([401, 414, 431].includes(r.status), `status ${r.status}`);
  assert.equal((await call("/healthz")).status, 200);
});

test("no token or secret is ever logged", async () => {
  const token = publishToken();
  await publish(w, { userId: "log-u", type: "t" }, { token });
  await publish(w, { userId: "log-u" }, { token: token + "x" });
  // The refusal is the last line these requests log: once it is here, all of theirs are.
  await w.event((e) => e.event === "request_refused" && e.code === "invalid_token");
  const sig = token.split(".")[2];
  assert.ok(w.logs.some((l) => l.includes('"publish"') && l.includes("log-u")), "the publish was logged");
  assert.ok(!w.logs.some((l) => l.includes(sig) || l.includes(SECRET)));
});
