// What a Durable Object's SQLite calls cost in workerd, measured as the workerd process's CPU (every
// thread, from /proc) over many requests, against the same request doing nothing:
//   node bench/micro/sql.mjs
// - `schemaN/obj`: ms per new object that runs a schema of N tables (Switchboard's hub has 14, the
//   reference 1) on its first request;
// - `<op><bytes> us/op`: µs per statement, 200 in one request (one commit for all of them);
// - `single <op><bytes> us/req`: µs per request that runs one statement (a commit each), against
//   `single touch8` (a request that writes nothing): the difference is one write transaction.
// Not part of run.sh; BENCHMARKS.md ("The JS↔wasm toll, third round") quotes a run.
import { Miniflare } from "miniflare";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { cpuMs, workerdPids } from "../servers.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const mf = new Miniflare({ modules: true, scriptPath: path.join(here, "sql-worker.js"), compatibilityDate: "2026-08-01",
  durableObjects: { HUB: { className: "Hub", useSQLite: true } }, host: "127.0.0.1", port: 0 });
const url = await mf.ready;
const pids = workerdPids();
if (!pids.length) throw new Error("no workerd child process found");
const cpu = () => cpuMs(pids);
async function timeit(label, qs, reps, namer) {
  await fetch(`${url}?${qs}&name=warm${label}`).then(r => r.text());
  const c0 = cpu();
  for (let i = 0; i < reps; i++) await fetch(`${url}?${qs}&name=${namer(i)}`).then(r => r.text());
  const c1 = cpu();
  return (c1 - c0) / reps;
}
const r = {};
for (let round = 0; round < 2; round++) {
  r[`none/obj`+round] = await timeit("none"+round, "op=none", 400, i => `none${round}-${i}`);
  r[`schema1/obj`+round] = await timeit("s1"+round, "op=schema1", 400, i => `s1${round}-${i}`);
  r[`schema3/obj`+round] = await timeit("s3"+round, "op=schema3", 400, i => `s3${round}-${i}`);
  r[`schema12/obj`+round] = await timeit("s12"+round, "op=schema12", 400, i => `s12${round}-${i}`);
  for (const [op, size] of [["meta", 8], ["hist", 100], ["histdel", 100], ["histconsume", 100], ["hist", 1024], ["hist", 65536], ["histdel", 65536], ["kv", 65536], ["str", 65536]]) {
    const per = await timeit(op+size+round, `op=${op}&n=200&size=${size}`, 10, () => `w${op}${size}${round}`);
    r[`${op}${size} us/op `+round] = per * 1000 / 200;
  }
  for (const [op, size] of [["touch", 8], ["meta", 8], ["hist", 100], ["hist", 1024], ["hist", 65536]]) {
    const per = await timeit("single"+op+size+round, `op=${op}&n=1&size=${size}`, 1000, () => `single${op}${size}${round}`);
    r[`single ${op}${size} us/req `+round] = per * 1000;
  }
}
console.log(r);
await mf.dispose();
