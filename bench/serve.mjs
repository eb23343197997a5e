// Starts Switchboard (build/) and the reference Worker as two Miniflare instances, each with its own
// workerd process, on 127.0.0.1 with random ports. Prints one JSON line:
//   {"servers":[{"name","url","secret","pid"}, ...]}
// and keeps them up until stdin closes, SIGTERM/SIGINT arrives, or BENCH_SERVE_MAX_S (default 1800 s)
// passes. Usage: node bench/serve.mjs [switchboard] [reference]
import crypto from "node:crypto";
import { startServer } from "./servers.mjs";

const names = process.argv.slice(2).length ? process.argv.slice(2) : ["switchboard", "reference"];
const running = [];
let stopping = false;

async function stop(code = 0) {
  if (stopping) return;
  stopping = true;
  await Promise.allSettled(running.map((s) => s.mf.dispose()));
  process.exit(code);
}

process.on("SIGTERM", () => stop(0));
process.on("SIGINT", () => stop(0));
process.stdin.on("end", () => stop(0));
process.stdin.on("error", () => stop(0));
process.stdin.resume();
setTimeout(() => {
  process.stderr.write("[serve] maximum lifetime reached, stopping\n");
  stop(2);
}, Number(process.env.BENCH_SERVE_MAX_S || 1800) * 1000).unref();

try {
  const out = [];
  for (const name of names) {
    const secret = "bench-" + crypto.randomBytes(16).toString("hex");
    const s = await startServer(name, secret);
    running.push(s);
    out.push({ name, url: s.url, secret, pid: s.pid });
  }
  process.stdout.write(JSON.stringify({ servers: out }) + "\n");
} catch (e) {
  process.stderr.write(`[serve] ${e.stack || e}\n`);
  await stop(1);
}
