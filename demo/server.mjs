#!/usr/bin/env node
// The Switchboard demo: runs the built Worker locally (workerd through Miniflare, Durable Object storage
// persisted in a temporary directory so a restart keeps history) and serves a page that uses the
// JavaScript client, plus the two endpoints a real backend would provide:
//   POST /api/token   {userId}                          -> {token, expiresAt}  (DEV ONLY: anyone gets any user's token;
//                                                          it may join and publish to `room:*` channels, and carries
//                                                          the user's presence data {name})
//   POST /api/publish {userId, type, payload, timeoutMs} -> the Worker's /publish answer (the publish token stays here)
//   POST /api/restart-worker                            -> restarts the Worker: every connection drops
//   GET  /api/config                                    -> {workerUrl}
// Everything binds 127.0.0.1. Run it with `scripts/demo.sh` (which builds what is missing first), or
//   node demo/server.mjs [--port 8080] [--worker-port 8787] [--build-dir build]
import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseEnv } from "node:util";
import { Miniflare } from "miniflare";
import { mintToken } from "../clients/server/dist/index.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..");
const TOKEN_TTL_SECONDS = 15 * 60;

/** JWT_SECRET from the environment, else from .dev.vars (Node's own env-file parser). */
function readSecret(file = path.join(root, ".dev.vars")) {
  if (process.env.JWT_SECRET) return process.env.JWT_SECRET;
  if (!fs.existsSync(file)) throw new Error(`no JWT_SECRET: ${file} does not exist (run \`make dev\` once to create it)`);
  const secret = parseEnv(fs.readFileSync(file, "utf8")).JWT_SECRET;
  if (!secret) throw new Error(`no JWT_SECRET in ${file}`);
  return secret;
}

/**
 * The Durable Object classes and compatibility flags of wrangler.toml, so the demo runs the Worker with
 * the bindings it is deployed with (a new class added there is picked up here).
 */
function wranglerConfig(file = path.join(root, "wrangler.toml")) {
  const text = fs.readFileSync(file, "utf8");
  const durableObjects = {};
  for (const section of text.split(/^\[\[durable_objects\.bindings\]\]\s*$/m).slice(1)) {
    const block = section.split(/^\[/m)[0]; // up to the next table
    const name = /^name\s*=\s*"([^"]+)"/m.exec(block)?.[1];
    const className = /^class_name\s*=\s*"([^"]+)"/m.exec(block)?.[1];
    if (name && className) durableObjects[name] = { className, useSQLite: true };
  }
  if (!Object.keys(durableObjects).length) throw new Error(`${file}: no [[durable_objects.bindings]]`);
  const flags = /^compatibility_flags\s*=\s*\[([^\]]*)\]/m.exec(text)?.[1] ?? "";
  return { durableObjects, compatibilityFlags: [...flags.matchAll(/"([^"]+)"/g)].map((m) => m[1]) };
}

const STATIC = {
  "/": ["index.html", "text/html; charset=utf-8", here],
  "/app.js": ["app.js", "text/javascript; charset=utf-8", here],
  "/style.css": ["style.css", "text/css; charset=utf-8", here],
  "/sdk/index.js": ["index.js", "text/javascript; charset=utf-8", path.join(root, "clients/js/dist")],
  "/sdk/presence.js": ["presence.js", "text/javascript; charset=utf-8", path.join(root, "clients/js/dist")],
};

/**
 * Starts the Worker and the demo page server. Options: `port`/`workerPort` (0 = any free port),
 * `buildDir`, `secret` (default: JWT_SECRET from the environment or .dev.vars), `vars` (Worker settings),
 * `log` (a function for the demo's one-line messages) and `workerLog` (for the Worker's log lines); both default to none.
 */
export async function startDemo({ port = 8080, workerPort = 8787, buildDir, secret, vars = {}, log = () => {}, workerLog } = {}) {
  buildDir = path.resolve(buildDir || process.env.SWITCHBOARD_BUILD_DIR || path.join(root, "build"));
  for (const f of ["index.js", "index_bg.wasm"]) {
    if (!fs.existsSync(path.join(buildDir, f))) throw new Error(`${path.join(buildDir, f)} is missing: build the Worker first (bash scripts/build.sh)`);
  }
  if (!fs.existsSync(path.join(root, "clients/js/dist/index.js"))) throw new Error("clients/js/dist/index.js is missing: build the client first (node clients/js/build.mjs)");
  secret ??= readSecret();
  const { durableObjects, compatibilityFlags } = wranglerConfig();
  const persist = fs.mkdtempSync(path.join(os.tmpdir(), "switchboard-demo-"));

  let mf = null;
  let workerUrl = null;
  const startWorker = async () => {
    mf = new Miniflare({
      name: "switchboard",
      scriptPath: path.join(buildDir, "index.js"),
      modulesRoot: buildDir,
      modules: true,
      modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
      compatibilityDate: "2026-08-01",
      compatibilityFlags,
      durableObjects,
      durableObjectsPersist: persist,
      bindings: { JWT_SECRET: secret, ...vars },
      host: "127.0.0.1",
      port: workerPort,
      handleRuntimeStdio(stdout, stderr) {
        for (const stream of [stdout, stderr]) {
          if (!workerLog) stream.resume();
          else stream.setEncoding("utf8").on("data", (d) => d.split("\n").filter(Boolean).forEach((l) => workerLog(l)));
        }
      },
    });
    workerUrl = (await mf.ready).toString().replace(/\/$/, "");
    workerPort = Number(new URL(workerUrl).port); // keep the same port across restarts
  };
  try {
    await startWorker();
  } catch (e) {
    fs.rmSync(persist, { recursive: true, force: true });
    throw /Address already in use/.test(e.message) ? new Error(`the Worker's port ${workerPort} is in use (is \`make dev\` running?): pick another with --worker-port (PORT=… for scripts/demo.sh)`) : e;
  }

  // Tests can hold token requests (a browser that wants to reconnect then waits) — not reachable over HTTP.
  let tokenGate = null;
  const publishToken = () => mintToken({ secret, publish: true, expiresIn: 300, claims: { sub: "demo-backend" } });
  let restarting = null;
  const restartWorker = async () => {
    restarting ??= (async () => {
      log("restarting the worker: every connection drops, history is kept");
      await mf.dispose();
      await startWorker();
      log("worker back on " + workerUrl);
    })().finally(() => (restarting = null));
    return restarting;
  };

  const api = {
    "GET /api/config": async () => [200, { workerUrl }],
    "POST /api/token": async (body) => {
      const userId = body?.userId;
      if (typeof userId !== "string" || !userId.trim() || userId.length > 64) return [400, { error: "invalid_user_id", message: "userId must be a non-empty string of at most 64 characters" }];
      if (tokenGate) await tokenGate;
      // The room's presence shows `presence.name`; a real backend would put a display name or avatar here.
      const token = await mintToken({ secret, userId, expiresIn: TOKEN_TTL_SECONDS, channels: ["room:*"], publishChannels: ["room:*"], claims: { sub: userId, presence: { name: userId } } });
      return [200, { token, expiresAt: Math.floor(Date.now() / 1000) + TOKEN_TTL_SECONDS }];
    },
    "POST /api/publish": async (body) => {
      if (!body || typeof body !== "object") return [400, { error: "invalid_body", message: "send a JSON object {userId, type, payload, timeoutMs?}" }];
      if (restarting) await restarting;
      const res = await fetch(`${workerUrl}/publish`, {
        method: "POST",
        headers: { authorization: `Bearer ${await publishToken()}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      return [res.status, await res.json()];
    },
    "POST /api/restart-worker": async () => {
      await restartWorker();
      return [200, { workerUrl }];
    },
  };

  const server = http.createServer(async (req, res) => {
    const send = (status, body, type = "application/json") => {
      res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
      res.end(type === "application/json" ? JSON.stringify(body) : body);
    };
    try {
      const url = new URL(req.url, "http://x");
      const handler = api[`${req.method} ${url.pathname}`];
      if (handler) {
        let body;
        if (req.method === "POST") {
          let raw = "";
          for await (const chunk of req) {
            raw += chunk;
            if (raw.length > 65536) return send(413, { error: "payload_too_large", message: "at most 64 KiB" });
          }
          try {
            body = raw ? JSON.parse(raw) : {};
          } catch {
            return send(400, { error: "invalid_json", message: "the body is not JSON" });
          }
        }
        const [status, out] = await handler(body);
        return send(status, out);
      }
      const file = req.method === "GET" && STATIC[url.pathname];
      if (file) return send(200, fs.readFileSync(path.join(file[2], file[0])), file[1]);
      send(404, { error: "not_found", message: `no route ${req.method} ${url.pathname}` });
    } catch (e) {
      log(`error: ${e.message}`);
      send(502, { error: "demo_error", message: e.message });
    }
  });
  try {
    await new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", resolve);
    });
  } catch (e) {
    await mf.dispose();
    fs.rmSync(persist, { recursive: true, force: true });
    throw e.code === "EADDRINUSE" ? new Error(`the page's port ${port} is in use: pick another with --port (DEMO_PORT=… for scripts/demo.sh)`) : e;
  }
  const pageUrl = `http://127.0.0.1:${server.address().port}`;
  return {
    url: pageUrl,
    get workerUrl() {
      return workerUrl;
    },
    restartWorker,
    /** Where the Worker's Durable Object storage lives (removed by stop()). */
    persistDir: persist,
    /** Makes /api/token wait until `release()` (tests: keep browsers from reconnecting for a while). */
    holdTokens() {
      let release;
      tokenGate = new Promise((r) => (release = r));
      return () => {
        tokenGate = null;
        release();
      };
    },
    publish: (body) => api["POST /api/publish"](body).then(([status, body]) => ({ status, body })),
    async stop() {
      try {
        server.closeAllConnections?.();
        await new Promise((r) => server.close(r));
        await restarting?.catch(() => {});
        await mf?.dispose();
      } finally {
        fs.rmSync(persist, { recursive: true, force: true });
      }
    },
  };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = { port: Number(process.env.DEMO_PORT || 8080), workerPort: Number(process.env.PORT || 8787) };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--port") args.port = Number(argv[++i]);
    else if (a === "--worker-port") args.workerPort = Number(argv[++i]);
    else if (a === "--build-dir") args.buildDir = argv[++i];
    else {
      console.error(`demo: unknown argument ${a}\nusage: node demo/server.mjs [--port 8080] [--worker-port 8787] [--build-dir build]`);
      process.exit(2);
    }
  }
  for (const k of ["port", "workerPort"]) {
    if (!Number.isInteger(args[k]) || args[k] < 0 || args[k] > 65535) {
      console.error(`demo: ${k} must be a port number`);
      process.exit(2);
    }
  }
  const quiet = process.env.DEMO_QUIET === "1";
  const demo = await startDemo({ ...args, log: (m) => console.log(`[demo] ${m}`), workerLog: quiet ? undefined : (l) => console.log(`[worker] ${l}`) }).catch((e) => {
    console.error(`demo: ${e.message}`);
    process.exit(1);
  });
  console.log(`
  Switchboard demo

    Open   ${demo.url}/?user=alice          (open it in two tabs)
           ${demo.url}/?user=alice&transport=sse
           ${demo.url}/?user=bob            (a second user)
    Worker ${demo.workerUrl}
    CLI    npx switchboard publish --url ${demo.workerUrl} --user alice --type chat --payload '{"room":"lobby","text":"hi from the terminal"}'

  The token endpoint hands out any user's token: a development tool only. Worker logs follow
  (DEMO_QUIET=1 hides them). Ctrl-C stops everything.
`);
  // On Ctrl-C Miniflare's own exit hook kills workerd first, after which dispose() may never settle:
  // remove the storage directory on exit whatever happens.
  process.on("exit", () => fs.rmSync(demo.persistDir, { recursive: true, force: true }));
  const stop = async () => {
    await demo.stop().catch((e) => console.error(`demo: while stopping: ${e.message}`));
    process.exit(0);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}
