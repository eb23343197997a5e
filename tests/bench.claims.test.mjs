// The published benchmark figures agree with their machine-readable files: BENCHMARKS.md's tables and
// README's "Benchmarks" section are checked against bench/results-published/*.json, and every budget
// line's verdict against its own value. No server runs here; this guards the claims, not the speed.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { ROOT } from "./harness.mjs";

const read = (p) => fs.readFileSync(path.join(ROOT, p), "utf8");
const json = (p) => JSON.parse(read(p));
const MD = read("BENCHMARKS.md");
const README = read("README.md");
const MULTI = json("bench/results-published/2026-11-23-multi-user.json");
const CHANGES = json("bench/results-published/what-each-change-bought.json");

/** The rows (arrays of trimmed cells) of the first Markdown table after `heading` in `text`. */
function table(text, heading) {
  const at = text.indexOf(heading);
  assert.ok(at >= 0, `no "${heading}"`);
  const lines = text.slice(at).split("\n");
  const start = lines.findIndex((l) => l.startsWith("|"));
  const rows = [];
  for (const l of lines.slice(start + 2)) {
    if (!l.startsWith("|")) break;
    rows.push(l.replace(/^\||\|$/g, "").split("|").map((c) => c.trim()));
  }
  return rows;
}

/** A published run's scenarios by name. */
const byName = (run) => Object.fromEntries(run.scenarios.map((s) => [s.scenario, s]));
/** The numbers in a table cell, as printed (so "1.40" keeps its two decimals for `near`). */
const nums = (cell) => cell.match(/\d+(?:\.\d+)?/g) || [];
/** A printed number is the file's value to the printed precision (or to 3 significant digits). */
function near(text, actual, what) {
  const unit = 10 ** -(String(text).split(".")[1] || "").length;
  const printed = Number(text);
  assert.ok(Math.abs(printed - actual) <= unit / 2 + 1e-9 || Math.abs(printed - Number(actual.toPrecision(3))) <= unit / 2 + 1e-9,
    `${what}: printed ${text}, file ${actual}`);
}

test("BENCHMARKS.md's Results table is the published results file, value for value", () => {
  const rows = table(MD, "\n## Results");
  assert.equal(rows.length, Object.values(MULTI.scenarios).reduce((n, s) => n + Object.keys(s.switchboard).length, 0));
  for (const [scenario, metric, sb, ref, ratio] of rows) {
    const s = MULTI.scenarios[scenario];
    assert.deepEqual([Number(sb), Number(ref), Number(ratio)], [s.switchboard[metric], s.reference[metric], s.ratio[metric]], `${scenario} ${metric}`);
    // The ratio column is the ratio of the two columns (to the rounding of the table).
    assert.ok(Math.abs(Number(sb) / Number(ref) - Number(ratio)) < 0.011, `${scenario} ${metric}: ${sb}/${ref} is not ${ratio}`);
  }
});

test("README's Benchmarks figures are the published results file's, and name the build they come from", () => {
  const section = README.slice(README.indexOf("## Benchmarks"), README.indexOf("## Contributing"));
  assert.match(section, /before channels/);
  assert.match(section, /bench\/results-published\/2026-11-23-multi-user\.json/);
  const s = MULTI.scenarios;
  const rows = Object.fromEntries(table(section, "| scenario |").map((r) => [r[0].split(":")[0], r.slice(1)]));
  const nums = (cell) => (cell.match(/[\d.]+/g) || []).map(Number);
  assert.deepEqual(nums(rows.rtt[0]), [s.rtt.switchboard.p50_ms, s.rtt.switchboard.p99_ms]);
  assert.deepEqual(nums(rows.rtt[1]), [s.rtt.reference.p50_ms, s.rtt.reference.p99_ms]);
  assert.deepEqual(nums(rows.rtt[2]), [s.rtt.ratio.p50_ms, s.rtt.ratio.p99_ms]);
  const cpu = ["rtt", "fanout100", "fanout1000", "throughput"];
  assert.deepEqual(nums(rows["CPU per publish"][0]), cpu.map((k) => s[k].switchboard.cpu_ms_per_publish));
  assert.deepEqual(nums(rows["CPU per publish"][1]), cpu.map((k) => s[k].reference.cpu_ms_per_publish));
  assert.deepEqual(nums(rows["CPU per publish"][2]), cpu.map((k) => s[k].ratio.cpu_ms_per_publish));
  const fan = rows["fanout to 100 sockets (publish incl. 100 acks), p50"];
  assert.deepEqual(fan.map(nums).flat(), [s.fanout100.switchboard.p50_ms, s.fanout100.reference.p50_ms, s.fanout100.ratio.p50_ms]);
  const mem = rows["memory per idle socket (hubs still in memory)"];
  assert.deepEqual(mem.map(nums).flat(), [s.idle.switchboard.mem_kb_per_socket, s.idle.reference.mem_kb_per_socket, s.idle.ratio.mem_kb_per_socket]);
});

test("every budget line's verdict follows from its value, and the ratios are the Results table's", () => {
  const s = MULTI.scenarios;
  for (const [line, measured, holds] of table(MD, "\n## Budget")) {
    if (holds === "reported") continue;
    const values = (measured.match(/[\d.]+(?=x)/g) || []).map(Number);
    if (/server CPU per publish/.test(line)) {
      const k = line.split(":")[0];
      assert.equal(values[0], s[k].ratio.cpu_ms_per_publish, line);
      assert.equal(holds, values[0] <= 1.1 ? "yes" : "no", line);
    } else if (/publish p99/.test(line)) {
      const names = line.split(":")[1].split("/").map((k) => k.trim());
      const keys = names.map((k) => (/KiB/.test(k) ? `payload${k.match(/\d+/)[0]}k` : k));
      assert.deepEqual(values, keys.map((k) => s[k.toLowerCase()].ratio.p99_ms), line);
      assert.equal(holds, values.every((v) => v <= 1.1) ? "yes" : "no", line);
    } else if (/throughput \(publishes/.test(line)) {
      assert.equal(values[0], s.throughput.ratio.publishes_per_s);
      assert.equal(holds, values[0] >= 0.9 ? "yes" : "no");
    } else if (/memory per idle socket/.test(line)) {
      assert.equal(values[0], s.idle.ratio.mem_kb_per_socket);
      assert.equal(holds, values[0] <= 1 ? "yes" : "no");
    } else if (/release wasm/.test(line)) {
      const kb = Number(measured.match(/^([\d.]+) KB/)[1]);
      assert.ok(holds.startsWith(kb <= 300 ? "yes" : "no"), line);
      if (kb <= 300) assert.match(holds, new RegExp(`${Math.round(300 - kb)} KB headroom`), "the headroom is 300 KB less the size");
      else assert.match(holds, new RegExp(`${Math.round(kb - 300)} KB over`), "how far over the 300 KB target it is");
      // The enforced budget (scripts/test.sh) is named with what is left under it.
      if (kb > 300) assert.match(holds, new RegExp(`${Math.round(350 - kb)} KB under the enforced 350 KB`));
    } else {
      assert.fail(`a budget line this test does not know: ${line}`);
    }
  }
});

test("the 'What each change bought' table is its published file, and its summary sentence matches it", () => {
  const rows = table(MD, "### What each change bought");
  assert.equal(rows.length, CHANGES.builds.length);
  const cols = ["rtt", "fanout100", "fanout1000", "throughput", "payload512k"];
  rows.forEach((r, i) => {
    const b = CHANGES.builds[i];
    cols.forEach((c, k) => {
      const cell = r[k + 1];
      if (b[c] === null) return assert.match(cell, /—/);
      const [v, ratio] = cell.match(/[\d.]+/g).map(Number);
      assert.deepEqual([v, ratio], [b[c].cpu_ms_per_publish, b[c].ratio], `${b.build} ${c}`);
    });
    assert.equal(Number(r[6].match(/[\d.]+/)[0]), b.wasm_gzip_kb);
  });
  // A claim that the current build is at or below the core-only build everywhere must hold in the table.
  const [core, , , , current] = CHANGES.builds;
  const atOrBelow = cols.filter((c) => core[c] && current[c] && current[c].cpu_ms_per_publish <= core[c].cpu_ms_per_publish);
  if (/at or\s+below the core-only build's CPU in every scenario/.test(MD)) assert.deepEqual(atOrBelow, cols);
  const ratiosAtOrBelow = cols.filter((c) => core[c] && current[c] && current[c].ratio <= core[c].ratio);
  assert.deepEqual(ratiosAtOrBelow, ["fanout100", "fanout1000", "throughput", "payload512k"], "the sentence after the table names these");
});

test("README's current figures are the last sitting's two files, to their rounding", () => {
  const section = README.slice(README.indexOf("## Benchmarks"), README.indexOf("## Contributing"));
  const steadyFile = "bench/results-published/2026-12-01-final-steady.json";
  const idleFile = "bench/results-published/2026-12-01-final-idle.json";
  assert.ok(section.includes(steadyFile), "names the steady-state file");
  assert.ok(section.includes(path.basename(idleFile)), "names the idle file");
  const [steadyRun, idleRun] = [json(steadyFile), json(idleFile)];
  assert.equal(steadyRun.errors + idleRun.errors, 0);
  assert.equal(steadyRun.config.warm, 5000, "the steady state is measured after 5,000 publishes");
  assert.equal(steadyRun.extra.wasm.gzip_bytes, idleRun.extra.wasm.gzip_bytes, "one build");
  const steady = byName(steadyRun);
  const idle = byName(idleRun).idle;
  const rows = Object.fromEntries(table(section, "| figure |").map((r) => [r[0], r.slice(1)]));
  const cpu = (label, scenarios) => {
    const [sb, ref, ratio] = rows[label].map(nums);
    scenarios.forEach((k, i) => {
      near(sb[i], steady[k].switchboard.cpu_ms_per_publish, `${k} switchboard`);
      near(ref[i], steady[k].reference.cpu_ms_per_publish, `${k} reference`);
      near(ratio[i], steady[k].ratio.cpu_ms_per_publish, `${k} ratio`);
    });
  };
  cpu("CPU per publish: rtt (1 socket, acked)", ["rtt"]);
  cpu("CPU per publish: fanout to 100 sockets", ["fanout100"]);
  cpu("CPU per publish: fanout to 1,000 sockets", ["fanout1000"]);
  cpu("CPU per publish: 200 users, 16 concurrent publishers", ["throughput"]);
  cpu("CPU per publish: 50 users, 16 concurrent publishers", ["throughput50"]);
  cpu("CPU per publish: payload 1 KiB / 64 KiB / 512 KiB", ["payload1k", "payload64k", "payload512k"]);
  cpu("CPU per publish: rtt with permessage-deflate (as browsers connect)", ["rtt_deflate"]);
  const [rate, p50] = nums(rows["50 users, 16 concurrent publishers: publish rate / p50"][2]);
  near(rate, steady.throughput50.ratio.publishes_per_s, "throughput50 rate");
  near(p50, steady.throughput50.ratio.p50_ms, "throughput50 p50");
  const connect = rows["CPU per WebSocket connect (10 per user)"].map(nums).flat();
  near(connect[0], idle.switchboard.cpu_ms_per_connect, "connect switchboard");
  near(connect[1], idle.reference.cpu_ms_per_connect, "connect reference");
  near(connect[2], idle.ratio.cpu_ms_per_connect, "connect ratio");
  const mem = rows["memory per idle socket (hubs in memory)"].map(nums).flat();
  near(mem[0], idle.switchboard.mem_kb_per_socket, "memory switchboard");
  near(mem[1], idle.reference.mem_kb_per_socket, "memory reference");
  near(mem[2], idle.ratio.mem_kb_per_socket, "memory ratio");
  const channel = nums(rows["channel of 100 members: CPU per member delivery"][0]);
  near(channel[0], steady.channel100.switchboard.cpu_us_per_delivery / 1000, "channel");
  assert.ok(section.includes(`Switchboard's ${channel[0]} ms is at that floor`), "the channel bullet quotes the table");
  const cold = rows["cold start: first connect on a fresh workerd"].map(nums).flat();
  assert.deepEqual(cold.slice(0, 2).map(Number), [idleRun.extra.coldstart.switchboard.first_connect_ms, idleRun.extra.coldstart.reference.first_connect_ms]);
  near(cold[2], cold[0] / cold[1], "cold start ratio");
  near(nums(rows["release wasm, gzip"][0])[0], idleRun.extra.wasm.gzip_bytes / 1000, "wasm size");
  // Which targets the text says this sitting meets: exactly those that hold.
  const met = [steady.rtt.ratio.cpu_ms_per_publish <= 1, steady.throughput50.ratio.p50_ms <= 1.1, idle.ratio.mem_kb_per_socket <= 1.05, idleRun.extra.wasm.gzip_bytes <= 300000];
  assert.deepEqual(met, [true, true, true, true], "rtt, the p50, memory and the wasm's size meet their targets");
  const others = [..."fanout100 fanout1000 throughput throughput50 payload1k payload64k rtt_deflate".split(" ").map((k) => steady[k].ratio.cpu_ms_per_publish <= 1),
    steady.payload512k.ratio.cpu_ms_per_publish <= 1.3, steady.throughput50.ratio.publishes_per_s >= 1, idle.ratio.cpu_ms_per_connect <= 1.1];
  assert.ok(others.every((held) => !held), "and no other");
  assert.match(section, /In this sitting rtt, the p50, memory and the wasm's size meet theirs/);
});

test("the seventh round's two A/B tables (BENCHMARKS.md) are their published sittings, both orders and pooled", () => {
  const median = (v) => ((s) => (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2))([...v].sort((x, y) => x - y));
  const sizes = [];
  for (const [heading, name] of [["| one JSON reader |", "one-reader"], ["| log lines |", "log-lines"]]) {
    const ab = json(`bench/results-published/2026-12-01-${name}-ab.json`);
    const swapped = json(`bench/results-published/2026-12-01-${name}-ab-swapped.json`);
    assert.equal(ab.errors + swapped.errors, 0);
    // The same two builds, each order once: the swapped A/B puts the build before in Switchboard's place
    // (a file's wasm size is its Switchboard side's).
    assert.ok(ab.config.against && swapped.config.against, `${name}: both are A/Bs`);
    assert.equal(swapped.config.build, ab.config.against, `${name}: the swapped A/B measures the build before`);
    assert.ok(ab.extra.wasm.gzip_bytes < swapped.extra.wasm.gzip_bytes, `${name}: this build is the smaller`);
    sizes.push([ab.extra.wasm.gzip_bytes, swapped.extra.wasm.gzip_bytes]);
    const [a, b] = [ab, swapped].map(byName);
    const rows = table(MD, heading);
    assert.ok(rows.length >= 3, `${name}: rows`);
    for (const [label, ...cells] of rows) {
      const [k, metric] = label.startsWith("CPU per WebSocket connect") ? ["idle", "cpu_ms_per_connect"] : [label, "cpu_ms_per_publish"];
      const [[t1, t2, t3], [s1, s2, s3], [p1, p2, p3]] = cells.map(nums);
      near(t1, a[k].switchboard[metric], `${name} ${k} this`);
      near(t2, a[k].reference[metric], `${name} ${k} before`);
      near(t3, a[k].ratio[metric], `${name} ${k} ratio`);
      near(s1, b[k].switchboard[metric], `${name} ${k} swapped: before`);
      near(s2, b[k].reference[metric], `${name} ${k} swapped: this`);
      near(s3, b[k].ratio[metric], `${name} ${k} swapped ratio`);
      const runs = (r, side) => r[k][`${side}_runs`].map((m) => m[metric]);
      const thisPooled = median([...runs(a, "switchboard"), ...runs(b, "reference")]);
      const beforePooled = median([...runs(a, "reference"), ...runs(b, "switchboard")]);
      near(p1, thisPooled, `${name} ${k} pooled this`);
      near(p2, beforePooled, `${name} ${k} pooled before`);
      near(p3, thisPooled / beforePooled, `${name} ${k} pooled ratio`);
    }
  }
  // The rounds chain: the log lines' "before" is the one-reader build; the sizes in the text are these.
  assert.equal(sizes[0][0], sizes[1][1], "the log lines were measured against the one-reader build");
  const [[reader, first], [last]] = sizes;
  const section = MD.slice(MD.indexOf("### Two size cuts"), MD.indexOf("### What stands in the way"));
  const kb = (bytes) => (bytes / 1000).toFixed(1);
  for (const claim of [`(${kb(first)} → ${kb(reader)} KB)`, `(${kb(reader)} → ${kb(last)} KB)`, `${((first - last) / 1000).toFixed(1)} KB of gzip`]) {
    assert.ok(section.includes(claim), `BENCHMARKS says ${claim}`);
  }
  // "the one figure both orders agree on (0.935, and 1/1.073 = 0.932 ...)"
  const [x, y, z] = nums(section.match(/both orders agree on \(([\d.]+), and 1\/([\d.]+) = ([\d.]+)/).slice(1).join(" "));
  const idle = [json("bench/results-published/2026-12-01-log-lines-ab.json"), json("bench/results-published/2026-12-01-log-lines-ab-swapped.json")].map((r) => byName(r).idle.ratio.cpu_ms_per_connect);
  near(x, idle[0], "connect ratio, this order");
  near(y, idle[1], "connect ratio, swapped");
  near(z, 1 / idle[1], "connect ratio, swapped and inverted");
});

test("the eighth round's size steps and A/B (BENCHMARKS.md) are its published sitting", () => {
  const ab = json("bench/results-published/2026-12-01-size-target-ab.json");
  assert.equal(ab.errors, 0);
  assert.ok(ab.config.against, "an A/B against the build before");
  const section = MD.slice(MD.indexOf("### The size target met"), MD.indexOf("### What stands in the way"));
  // The steps' last row is the measured build, and it is under the target the heading claims.
  const steps = table(section, "| step | raw bytes | gzip bytes |");
  const [raw, gz] = nums(steps[steps.length - 1][1].replace(/,/g, "") + " " + steps[steps.length - 1][2].replace(/,/g, "")).map(Number);
  assert.equal(gz, ab.extra.wasm.gzip_bytes, "the last step is the published build");
  assert.ok(gz <= 300000 && section.startsWith(`### The size target met (issue 12, eighth round): ${(gz / 1000).toFixed(1)} KB`));
  assert.ok(raw > gz);
  for (let i = 1; i < steps.length; i++) {
    const [prev, cur] = [steps[i - 1], steps[i]].map((r) => Number(r[2].replace(/,/g, "")));
    const said = section.match(new RegExp(`\\(-(\\d+\\.\\d) KB of gzip\\)`, "g"))[i - 1];
    near(said.match(/[\d.]+/)[0], (prev - cur) / 1000, `step ${i}'s saving`);
  }
  // The A/B table: both orders and the pooled medians, as the seventh round's.
  const swapped = json("bench/results-published/2026-12-01-size-target-ab-swapped.json");
  assert.equal(swapped.errors, 0);
  assert.equal(swapped.config.build, ab.config.against, "the swapped A/B measures the build before");
  assert.equal(swapped.extra.wasm.gzip_bytes, Number(steps[0][2].replace(/,/g, "")), "the build before is the first step");
  const median = (v) => ((s) => (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2))([...v].sort((x, y) => x - y));
  const [a, b] = [ab, swapped].map(byName);
  const rows = table(section, "| eighth round |");
  assert.equal(rows.length, 3);
  for (const [label, ...cells] of rows) {
    const [k, metric] = label.startsWith("CPU per WebSocket connect") ? ["idle", "cpu_ms_per_connect"]
      : label.startsWith("memory") ? ["idle", "mem_kb_per_socket"] : [label, "cpu_ms_per_publish"];
    const [[t1, t2, t3], [s1, s2, s3], [p1, p2, p3]] = cells.map(nums);
    near(t1, a[k].switchboard[metric], `${k} this`);
    near(t2, a[k].reference[metric], `${k} before`);
    near(t3, a[k].ratio[metric], `${k} ratio`);
    near(s1, b[k].switchboard[metric], `${k} swapped: before`);
    near(s2, b[k].reference[metric], `${k} swapped: this`);
    near(s3, b[k].ratio[metric], `${k} swapped ratio`);
    const runs = (r, side) => r[k][`${side}_runs`].map((m) => m[metric]);
    const thisPooled = median([...runs(a, "switchboard"), ...runs(b, "reference")]);
    const beforePooled = median([...runs(a, "reference"), ...runs(b, "switchboard")]);
    near(p1, thisPooled, `${k} pooled this`);
    near(p2, beforePooled, `${k} pooled before`);
    near(p3, thisPooled / beforePooled, `${k} pooled ratio`);
  }
  const cold = [ab, swapped].map((r) => r.extra.coldstart);
  for (const claim of [`took ${cold[0].switchboard.first_connect_ms.toFixed(1)} ms against ${cold[0].reference.first_connect_ms.toFixed(1)} ms`,
    `${cold[1].reference.first_connect_ms.toFixed(1)} against ${cold[1].switchboard.first_connect_ms.toFixed(1)} in the other`,
    `${((Number(steps[0][2].replace(/,/g, "")) - gz) / 1000).toFixed(1)} KB of gzip (${((Number(steps[0][1].replace(/,/g, "")) - raw) / 1000).toFixed(1)} KB raw) less`]) {
    assert.ok(section.includes(claim), `BENCHMARKS says ${claim}`);
  }
});

test("the last sitting's target table (BENCHMARKS.md) is its four files and the fifth round's floor, with each verdict from its value", () => {
  const R = "bench/results-published/";
  const [steadyRun, idleRun, floorSteady, floorIdle, floorOld] = ["2026-12-01-final-steady", "2026-12-01-final-idle", "2026-12-01-floor-steady", "2026-12-01-floor-idle", "2026-11-30-rust-floor"].map((f) => json(`${R}${f}.json`));
  for (const r of [steadyRun, idleRun, floorSteady, floorIdle]) assert.equal(r.errors, 0);
  for (const r of [floorSteady, floorIdle]) assert.equal(r.config.build, "bench/floor/build", "the floor's sittings measure the floor");
  const [S, I, FS, FI, FO] = [steadyRun, idleRun, floorSteady, floorIdle, floorOld].map(byName);
  const section = MD.slice(MD.indexOf("### The last sitting (issue 12)"), MD.indexOf("### What stands in the way"));
  const rows = Object.fromEntries(table(section, "| target | limit |").map((r) => [r[0], r.slice(1)]));
  const check = (label, value, floor, floorSource, met) => {
    const [limit, sw, fl, verdict] = rows[label];
    near(nums(sw)[0], value, `${label}: Switchboard`);
    if (floor !== null) near(nums(fl)[0], floor, `${label}: floor`);
    assert.ok(fl.includes(floorSource), `${label}: the floor is from ${floorSource}`);
    const bound = Number(nums(limit)[0]);
    assert.equal(verdict, met(value, bound) ? "yes" : "no", `${label}: the verdict follows from ${value} against ${limit}`);
  };
  const atMost = (v, b) => v <= b;
  const atLeast = (v, b) => v >= b;
  const cpu = (d, k) => d[k].ratio.cpu_ms_per_publish;
  for (const [k, label] of [["rtt", "rtt"], ["fanout100", "fanout100"], ["fanout1000", "fanout1000"], ["throughput", "throughput"], ["payload1k", "payload 1 KiB"], ["payload64k", "payload 64 KiB"], ["payload512k", "payload 512 KiB"]]) {
    const fromThis = k in FS;
    check(`CPU per publish: ${label}`, cpu(S, k), cpu(fromThis ? FS : FO, k), fromThis ? "this sitting" : "fifth round", atMost);
  }
  check("throughput50: publish rate", S.throughput50.ratio.publishes_per_s, FO.throughput50.ratio.publishes_per_s, "fifth round", atLeast);
  check("throughput50: publish p50", S.throughput50.ratio.p50_ms, FO.throughput50.ratio.p50_ms, "fifth round", atMost);
  check("CPU per WebSocket connect", I.idle.ratio.cpu_ms_per_connect, FI.idle.ratio.cpu_ms_per_connect, "this sitting", atMost);
  check("memory per idle socket", I.idle.ratio.mem_kb_per_socket, FI.idle.ratio.mem_kb_per_socket, "this sitting", atMost);
  check("channel100: CPU per member delivery", S.channel100.switchboard.cpu_us_per_delivery / 1000, null, "plain JS", atMost);
  const cold = (r) => r.extra.coldstart.switchboard.first_connect_ms / r.extra.coldstart.reference.first_connect_ms;
  check("cold start: first connect", cold(idleRun), cold(floorIdle), "this sitting", atMost);
  check("release wasm, gzip", idleRun.extra.wasm.gzip_bytes / 1000, floorIdle.extra.wasm.gzip_bytes / 1000, "this sitting", atMost);
  // README's sentence on the floor's new figures.
  const said = README.match(/where these had not: fanout1000\s+([\d.]+)x, throughput ([\d.]+)x, connects ([\d.]+)x and cold start ([\d.]+)x[^]*?: ([\d.]+) KB;/);
  assert.ok(said, "README quotes the floor's new figures");
  near(said[1], cpu(FS, "fanout1000"), "README floor fanout1000");
  near(said[2], cpu(FS, "throughput"), "README floor throughput");
  near(said[3], FI.idle.ratio.cpu_ms_per_connect, "README floor connect");
  near(said[4], cold(floorIdle), "README floor cold start");
  near(said[5], floorIdle.extra.wasm.gzip_bytes / 1000, "README floor wasm");
  // "Every target not met has its limit below the Rust floor's own figure."
  for (const [label, [limit, , fl, verdict]] of Object.entries(rows)) {
    if (verdict === "yes" || label.startsWith("channel")) continue;
    const [bound, floor] = [Number(nums(limit)[0]), Number(nums(fl)[0])];
    assert.ok(label.includes("rate") ? floor < bound : floor > bound, `${label}: the floor (${floor}) misses ${limit} too`);
  }
});

test("the token check's A/B table (BENCHMARKS.md) is its three published sittings, to their rounding", () => {
  const ab = json("bench/results-published/2026-11-30-token-check-ab.json");
  const swapped = json("bench/results-published/2026-11-30-token-check-ab-swapped.json");
  const vsRef = json("bench/results-published/2026-11-30-token-check.json");
  assert.equal(ab.errors + swapped.errors + vsRef.errors, 0);
  // The A/B's two builds are the same two builds, each order once: the sizes say which is which.
  assert.equal(ab.extra.wasm.gzip_bytes, vsRef.extra.wasm.gzip_bytes, "the A/B's build is the sitting's");
  assert.ok(swapped.extra.wasm.gzip_bytes > ab.extra.wasm.gzip_bytes, "the swapped A/B measures the build before");
  assert.ok(ab.config.against && swapped.config.against, "both are A/Bs");
  const [a, b, c] = [ab, swapped, vsRef].map((r) => byName(r).idle);
  const md = Object.fromEntries(table(MD, "### The token check").map((r) => [r[0], r.slice(1).map(nums)]));
  const [[c1, c2, c3], [s1, s2, s3], [r1, r2, r3]] = md["CPU per WebSocket connect (10 per user)"];
  near(c1, a.switchboard.cpu_ms_per_connect, "A/B this build");
  near(c2, a.reference.cpu_ms_per_connect, "A/B the build before");
  near(c3, a.ratio.cpu_ms_per_connect, "A/B ratio");
  near(s1, b.switchboard.cpu_ms_per_connect, "swapped: the build before");
  near(s2, b.reference.cpu_ms_per_connect, "swapped: this build");
  near(s3, b.ratio.cpu_ms_per_connect, "swapped ratio");
  near(r1, c.switchboard.cpu_ms_per_connect, "this build vs reference");
  near(r2, c.reference.cpu_ms_per_connect, "reference");
  near(r3, c.ratio.cpu_ms_per_connect, "ratio to the reference");
  const [[m1], [m2], [m3]] = md["memory per idle socket"];
  near(m1, a.ratio.mem_kb_per_socket, "A/B memory");
  near(m2, b.ratio.mem_kb_per_socket, "swapped memory");
  near(m3, c.ratio.mem_kb_per_socket, "memory vs reference");
  const [[k1, k2], [k3, k4], [k5, k6, k7]] = md["cold start: first connect on a fresh workerd"];
  assert.deepEqual([k1, k2].map(Number), [ab.extra.coldstart.switchboard.first_connect_ms, ab.extra.coldstart.reference.first_connect_ms]);
  assert.deepEqual([k3, k4].map(Number), [swapped.extra.coldstart.switchboard.first_connect_ms, swapped.extra.coldstart.reference.first_connect_ms]);
  assert.deepEqual([k5, k6].map(Number), [vsRef.extra.coldstart.switchboard.first_connect_ms, vsRef.extra.coldstart.reference.first_connect_ms]);
  near(k7, k5 / k6, "cold start ratio");
  const [[w1, w2]] = md["release wasm, gzip"];
  near(w1, ab.extra.wasm.gzip_bytes / 1000, "this build's wasm");
  near(w2, swapped.extra.wasm.gzip_bytes / 1000, "the build before's wasm");
  // "the six runs of each build pooled give 2.99 against 3.04 ms per connect (-1.6%)"
  const median = (v) => ((s) => (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2))([...v].sort((x, y) => x - y));
  const runs = (r, side) => byName(r).idle[`${side}_runs`].map((m) => m.cpu_ms_per_connect);
  const thisPooled = median([...runs(ab, "switchboard"), ...runs(swapped, "reference")]);
  const beforePooled = median([...runs(ab, "reference"), ...runs(swapped, "switchboard")]);
  const [p1, p2, p3] = nums(MD.match(/pooled give ([\d.]+) against ([\d.]+) ms per connect \(-([\d.]+)%\)/).slice(1).join(" "));
  near(p1, thisPooled, "pooled, this build");
  near(p2, beforePooled, "pooled, the build before");
  near(p3, (1 - thisPooled / beforePooled) * 100, "pooled change");
});

test("the Rust floor's tables (README and BENCHMARKS.md) are its two published sittings, to their rounding", () => {
  const floorFile = "bench/results-published/2026-11-30-rust-floor.json";
  const vsFile = "bench/results-published/2026-11-30-switchboard-vs-floor.json";
  const floorRun = json(floorFile);
  const vsRun = json(vsFile);
  // Each file says which build stood where: the floor in Switchboard's place, then in the reference's.
  assert.equal(floorRun.config.build, "bench/floor/build");
  assert.equal(vsRun.config.against, "bench/floor/build");
  assert.equal(floorRun.errors + vsRun.errors, 0);
  const floor = byName(floorRun);
  const vs = byName(vsRun);
  const coldRatio = (run) => run.extra.coldstart.switchboard.first_connect_ms / run.extra.coldstart.reference.first_connect_ms;

  const start = README.indexOf("### Against the Rust floor");
  const section = README.slice(start, README.indexOf("\n### ", start + 1));
  assert.ok(section.includes(floorFile) && section.includes(vsFile), "README names both files");
  const rows = Object.fromEntries(table(section, "| figure |").map((r) => [r[0], r.slice(1).map(nums)]));
  const ratios = (label, keys, metric = "cpu_ms_per_publish") => {
    const [a, b] = rows[label];
    keys.forEach((k, i) => {
      near(a[i], floor[k].ratio[metric], `README ${k} floor/reference`);
      near(b[i], vs[k].ratio[metric], `README ${k} switchboard/floor`);
    });
  };
  ratios("CPU per publish: rtt / fanout100 / throughput50", ["rtt", "fanout100", "throughput50"]);
  ratios("CPU per publish: payload 1 KiB / 64 KiB / 512 KiB", ["payload1k", "payload64k", "payload512k"]);
  ratios("CPU per WebSocket connect", ["idle"], "cpu_ms_per_connect");
  const [coldFloor, coldVs] = rows["cold start: first connect on a fresh workerd"];
  near(coldFloor[0], coldRatio(floorRun), "README cold start floor/reference");
  near(coldVs[0], coldRatio(vsRun), "README cold start switchboard/floor");
  const [wasmFloor, wasmSb] = rows["release wasm, gzip"];
  near(wasmFloor[0], floorRun.extra.wasm.gzip_bytes / 1000, "README floor wasm");
  near(wasmSb[0], vsRun.extra.wasm.gzip_bytes / 1000, "README switchboard wasm");
  // "Switchboard costs less per publish than a plain Rust port": every publish scenario, both tables.
  if (/costs less per publish than a plain Rust port/.test(section)) {
    for (const k of ["rtt", "fanout100", "throughput50", "payload1k", "payload64k", "payload512k"]) {
      assert.ok(vs[k].ratio.cpu_ms_per_publish < 1, `${k}: Switchboard / floor is ${vs[k].ratio.cpu_ms_per_publish}`);
    }
  }

  // BENCHMARKS.md's table: each cell "a / b ms, r" (or "r") in its sitting.
  const md = Object.fromEntries(table(MD, "### The Rust floor").map((r) => [r[0], r.slice(1).map(nums)]));
  const cpu = { rtt: "rtt", fanout100: "fanout100", throughput50: "throughput50", "payload 1 KiB": "payload1k", "payload 64 KiB": "payload64k", "payload 512 KiB": "payload512k" };
  for (const [label, k] of Object.entries(cpu)) {
    const [[fa, fb, fr], [va, vb, vr]] = md[`CPU per publish: ${label}`];
    near(fa, floor[k].switchboard.cpu_ms_per_publish, `${k} floor`);
    near(fb, floor[k].reference.cpu_ms_per_publish, `${k} reference`);
    near(fr, floor[k].ratio.cpu_ms_per_publish, `${k} floor ratio`);
    near(va, vs[k].switchboard.cpu_ms_per_publish, `${k} switchboard`);
    near(vb, vs[k].reference.cpu_ms_per_publish, `${k} floor (second sitting)`);
    near(vr, vs[k].ratio.cpu_ms_per_publish, `${k} switchboard ratio`);
  }
  const [[rate, p50], [vsRate, vsP50]] = md["throughput50: publish rate / p50"];
  near(rate, floor.throughput50.ratio.publishes_per_s, "throughput50 rate");
  near(p50, floor.throughput50.ratio.p50_ms, "throughput50 p50");
  near(vsRate, vs.throughput50.ratio.publishes_per_s, "throughput50 rate (switchboard/floor)");
  near(vsP50, vs.throughput50.ratio.p50_ms, "throughput50 p50 (switchboard/floor)");
  const [[ca, cb, cr], [da, db, dr]] = md["CPU per WebSocket connect (10 per user)"];
  near(ca, floor.idle.switchboard.cpu_ms_per_connect, "connect floor");
  near(cb, floor.idle.reference.cpu_ms_per_connect, "connect reference");
  near(cr, floor.idle.ratio.cpu_ms_per_connect, "connect floor ratio");
  near(da, vs.idle.switchboard.cpu_ms_per_connect, "connect switchboard");
  near(db, vs.idle.reference.cpu_ms_per_connect, "connect floor (second sitting)");
  near(dr, vs.idle.ratio.cpu_ms_per_connect, "connect switchboard ratio");
  const [[mf], [mv]] = md["memory per idle socket"];
  near(mf, floor.idle.ratio.mem_kb_per_socket, "memory floor");
  near(mv, vs.idle.ratio.mem_kb_per_socket, "memory switchboard/floor");
  const [[fc, rc, fcr], [sc, fc2, scr]] = md["cold start: first connect on a fresh workerd"];
  assert.deepEqual([fc, rc].map(Number), [floorRun.extra.coldstart.switchboard.first_connect_ms, floorRun.extra.coldstart.reference.first_connect_ms]);
  assert.deepEqual([sc, fc2].map(Number), [vsRun.extra.coldstart.switchboard.first_connect_ms, vsRun.extra.coldstart.reference.first_connect_ms]);
  near(fcr, coldRatio(floorRun), "cold start floor ratio");
  near(scr, coldRatio(vsRun), "cold start switchboard ratio");
});
