// Shared by serve.mjs and coldstart.mjs: how each server under test is started with Miniflare.
import { Miniflare } from "miniflare";
import crypto from "node:crypto";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const BENCH = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(BENCH, "..");

/** An HS256 token for `claims`, signed with `secret`, as both servers verify it. */
export function mint(secret, claims) {
  const b64 = (x) => Buffer.from(JSON.stringify(x)).toString("base64url");
  const data = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${data}.${crypto.createHmac("sha256", secret).update(data).digest("base64url")}`;
}

/** The servers under test. `build` is the directory holding Switchboard's index.js + wasm. */
export function serverOptions(name, secret, build = process.env.BENCH_BUILD_DIR || path.join(ROOT, "build")) {
  const common = {
    modules: true,
    compatibilityDate: "2026-08-01",
    durableObjects: { USER_HUB: { className: "UserHub", useSQLite: true } },
    host: "127.0.0.1",
    port: 0,
    // Both servers log one JSON line per connect and per publish; the lines are read and dropped
    // here so printing them never slows the runner (see BENCHMARKS.md).
    handleRuntimeStdio(stdout, stderr) {
      stdout.on("data", () => {});
      stderr.on("data", (d) => {
        if (process.env.BENCH_SHOW_STDERR) process.stderr.write(d);
      });
    },
  };
  if (name === "switchboard") {
    return {
      ...common,
      name: "switchboard",
      scriptPath: path.join(build, "index.js"),
      modulesRoot: build,
      modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
      // Builds from before channels or event shards (BENCH_BUILD_DIR=an older build) lack those classes.
      durableObjects: {
        ...common.durableObjects,
        ...(fs.readFileSync(path.join(build, "index.js"), "utf8").includes("ChannelHub")
          ? { CHANNEL_HUB: { className: "ChannelHub", useSQLite: true } }
          : {}),
        ...(fs.readFileSync(path.join(build, "index.js"), "utf8").includes("EventHub")
          ? { EVENT_HUB: { className: "EventHub", useSQLite: true } }
          : {}),
      },
      // SWITCHBOARD_BENCH_VARS='{"HISTORY_LIMIT":"0"}' measures other settings (e.g. history off).
      bindings: { JWT_SECRET: secret, MAX_FRAMES_PER_SECOND: "100000", MAX_CONNECTIONS_PER_USER: "30000", MAX_PUBLISH_USERS: "2000", ...JSON.parse(process.env.SWITCHBOARD_BENCH_VARS || "{}") },
      compatibilityFlags: ["enable_request_signal"], // as in wrangler.toml
    };
  }
  // SWITCHBOARD_BENCH_AGAINST=<dir> (run.sh --against <dir>): the "reference" slot runs another Switchboard
  // build, so a change is measured against the build before it in one sitting, each scenario's two
  // servers back to back (the ratios are then this build / that one).
  if (name === "reference" && process.env.SWITCHBOARD_BENCH_AGAINST) {
    return { ...serverOptions("switchboard", secret, process.env.SWITCHBOARD_BENCH_AGAINST), name: "reference" };
  }
  if (name === "reference") {
    return {
      ...common,
      name: "reference",
      scriptPath: path.join(BENCH, "reference", "worker.js"),
      modulesRoot: path.join(BENCH, "reference"),
      bindings: { JWT_SECRET: secret },
    };
  }
  throw new Error(`unknown server ${name}`);
}

function childPids(ppid) {
  const out = [];
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, "utf8");
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(rest[1]) === ppid) out.push(Number(d));
    } catch {}
  }
  return out;
}

/** Exits with a clear message unless `perf record` can run here (the binary, and perf_event access). */
export function requirePerf(what) {
  const probe = spawnSync("perf", ["record", "-q", "-o", "/dev/null", "--", "true"], { encoding: "utf8" });
  if (probe.error || probe.status !== 0) {
    const why = probe.error ? "the perf command is not installed (Debian: apt-get install linux-perf)" : (probe.stderr || "").trim().split("\n")[0];
    console.error(`${what} needs perf: ${why}`);
    process.exit(2);
  }
}

/** The workerd processes `ppid` started (a Miniflare in this process, by default). */
export function workerdPids(ppid = process.pid) {
  return childPids(ppid).filter((p) => {
    try {
      return fs.readFileSync(`/proc/${p}/comm`, "utf8").includes("workerd");
    } catch {
      return false;
    }
  });
}

/** CPU time (user + system, every thread) of `pids` so far, in ms, from /proc (10 ms ticks). */
export function cpuMs(pids) {
  let ticks = 0;
  for (const p of pids) {
    const f = fs.readFileSync(`/proc/${p}/stat`, "utf8").split(") ")[1].split(" ");
    ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks * 10;
}

/** Starts one server; resolves with { mf, url, pid } where pid is its own workerd process. */
export async function startServer(name, secret, build) {
  const before = new Set(childPids(process.pid));
  const mf = new Miniflare(serverOptions(name, secret, build));
  const url = (await mf.ready).toString().replace(/\/$/, "");
  const fresh = childPids(process.pid).filter((p) => !before.has(p));
  let pid = fresh.find((p) => {
    try {
      return fs.readFileSync(`/proc/${p}/comm`, "utf8").includes("workerd");
    } catch {
      return false;
    }
  });
  if (pid === undefined) pid = fresh[0];
  if (pid === undefined) throw new Error(`could not find the workerd process of ${name}`);
  return { mf, url, pid };
}
