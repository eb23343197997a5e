// What one Durable Object RPC call costs in workerd: a Fan object calls 100 Member objects at once,
// many rounds, and the workerd process's CPU (every thread, from /proc) is divided by the calls.
//   node bench/micro/rpc.mjs
// `noop`: the call alone (the member returns its argument); `write`: the member also commits one
// SQLite upsert, as a channel member's hub records an envelope. A channel publish costs Switchboard
// one such call per member, so this is the floor of its CPU per member delivery in workerd.
import { Miniflare } from "miniflare";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { cpuMs, workerdPids } from "../servers.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const mf = new Miniflare({
  modules: true,
  scriptPath: path.join(here, "rpc-worker.js"),
  compatibilityDate: "2026-08-01",
  durableObjects: { FAN: { className: "Fan", useSQLite: true }, MEMBER: { className: "Member", useSQLite: true } },
  host: "127.0.0.1",
  port: 0,
});
const url = await mf.ready;
const pids = workerdPids();
if (!pids.length) throw new Error("no workerd child process found");
const cpu = () => cpuMs(pids);
const members = 100;
const out = {};
for (let round = 0; round < 3; round++) {
  for (const op of ["noop", "write"]) {
    const q = `?op=${op}&members=${members}&prefix=${op}`;
    for (let w = 0; w < 20; w++) await (await fetch(`${url}${q}&rounds=10`)).text(); // warm-up
    const c0 = cpu();
    const requests = 20, rounds = 20;
    for (let i = 0; i < requests; i++) await (await fetch(`${url}${q}&rounds=${rounds}`)).text();
    out[`${op} µs per call, round ${round + 1}`] = Math.round(((cpu() - c0) * 1000) / (requests * rounds * members));
  }
}
console.log(out);
await mf.dispose();
